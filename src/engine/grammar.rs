//! The grammar that holds an answer to the shape the client fixed: a JSON
//! answer (`response_format`), a forced tool call (`tool_choice` `required`
//! or a named function), or either of the two, all as one JSON schema. The
//! engine enforces it token by token (llguidance, inside mistral.rs), so the
//! shape holds whatever the directive asked for and however small the model.
//!
//! Pure: the API compiles the same grammar when a request arrives
//! ([`check`]), so a schema llguidance cannot use is a 400 at once rather
//! than a failed job later.

use serde_json::{json, Value};

use crate::job::{ResponseFormat, Tool, ToolChoice};

/// The JSON schema of one call of `tool`: the JSON object chat templates
/// ask tool-calling models for, which mistral.rs parses into a call (bare, or
/// inside the `<tool_call>` tags some models add).
pub fn call_schema(tool: &Tool) -> Value {
    json!({
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

fn answer_schema(format: &ResponseFormat) -> Option<Value> {
    match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(json!({"type": "object"})),
        ResponseFormat::JsonSchema { schema, .. } => Some(schema.clone()),
    }
}

/// The JSON schema the answer must match, or `None` when the answer is free
/// text (or free text that may be a tool call, which mistral.rs detects on
/// its own): a forced call is one of the callable tools' call objects; a
/// structured answer where a call is also allowed is either.
pub fn for_request(tools: &[Tool], choice: &ToolChoice, format: &ResponseFormat) -> Option<Value> {
    let callable: Vec<&Tool> = match choice {
        ToolChoice::None => vec![],
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.name == name).collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    let forced = matches!(choice, ToolChoice::Required | ToolChoice::Function(_));
    let answer = answer_schema(format);
    if callable.is_empty() || (!forced && answer.is_none()) {
        return answer;
    }
    let mut options: Vec<Value> = callable.iter().map(|t| call_schema(t)).collect();
    if !forced {
        options.extend(answer);
    }
    Some(if options.len() == 1 { options.remove(0) } else { json!({"anyOf": options}) })
}

/// Compiles `schema` as the engine would (against a byte-level vocabulary),
/// so a schema llguidance cannot use is refused when the request arrives.
pub fn check(schema: &Value) -> Result<(), String> {
    use llguidance::api::TopLevelGrammar;
    use std::sync::OnceLock;
    static FACTORY: OnceLock<Result<llguidance::ParserFactory, String>> = OnceLock::new();
    let factory = FACTORY
        .get_or_init(|| {
            llguidance::ParserFactory::new_simple(&toktrie::ApproximateTokEnv::single_byte_env()).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)?;
    factory.create_parser(TopLevelGrammar::from_json_schema(schema.clone())).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> Tool {
        Tool {
            name: name.into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        }
    }

    #[test]
    fn free_text_needs_no_grammar() {
        assert_eq!(for_request(&[], &ToolChoice::Auto, &ResponseFormat::Text), None);
        // Auto tool calls are found in free text by mistral.rs's parser.
        assert_eq!(for_request(&[tool("w")], &ToolChoice::Auto, &ResponseFormat::Text), None);
    }

    #[test]
    fn json_answers_get_their_schema_and_tools_chosen_away_are_dropped() {
        assert_eq!(for_request(&[], &ToolChoice::Auto, &ResponseFormat::JsonObject), Some(json!({"type": "object"})));
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let format = ResponseFormat::JsonSchema { name: "x".into(), schema: schema.clone() };
        assert_eq!(for_request(&[tool("w")], &ToolChoice::None, &format), Some(schema));
    }

    #[test]
    fn forced_calls_and_call_or_json_compile() {
        let tools = [tool("weather"), tool("time")];
        for (choice, format, options) in [
            (ToolChoice::Required, ResponseFormat::Text, 2),
            (ToolChoice::Function("time".into()), ResponseFormat::Text, 1),
            (ToolChoice::Auto, ResponseFormat::JsonObject, 3),
        ] {
            let schema = for_request(&tools, &choice, &format).unwrap();
            check(&schema).unwrap_or_else(|e| panic!("{schema}\n{e}"));
            let names: Vec<&Value> = match schema.get("anyOf") {
                Some(any) => any.as_array().unwrap().iter().map(|o| &o["properties"]["name"]["const"]).collect(),
                None => vec![&schema["properties"]["name"]["const"]],
            };
            assert_eq!(names.len(), options, "{choice:?}: {schema}");
            if choice == ToolChoice::Function("time".into()) {
                assert_eq!(names, [&json!("time")]);
            }
        }
    }

    #[test]
    fn schemas_llguidance_cannot_use_are_refused() {
        assert!(check(&json!({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}})).is_err());
        assert!(check(&json!({"type": "banana"})).is_err());
        assert!(check(&json!({"type": "array", "items": {"type": "string"}})).is_ok());
    }
}
