//! A classifier of prompts into task classes, from the text alone (pure).
//! Sprout's optimizer keeps one directive mix per class, because how much a
//! shorter answer hurts depends on the task: a multiple-choice pick loses
//! nothing by being brief, an open instruction often does.
//!
//! Rules, first match wins:
//! - `choice`: the prompt lists options (`(A)`, `A)`, `Choices:`, `Options:`);
//! - `math`: at least two numbers and a question or a "how many/much";
//! - `question`: a short question (at most 200 characters) without options;
//! - `instruction`: everything else (write, list, explain...).

pub const CLASSES: [&str; 4] = ["choice", "math", "question", "instruction"];

pub fn classify(text: &str) -> &'static str {
    let t = text.trim();
    let lower = t.to_lowercase();
    let has_options = lower.contains("choices:")
        || lower.contains("options:")
        || (t.contains("(A)") && t.contains("(B)"))
        || (t.contains("\nA)") && t.contains("\nB)"))
        || (t.contains("\nA.") && t.contains("\nB."));
    if has_options {
        return "choice";
    }
    let numbers = t
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .filter(|s| s.chars().any(|c| c.is_ascii_digit()))
        .count();
    let asks = t.contains('?') || lower.contains("how many") || lower.contains("how much");
    if numbers >= 2 && asks {
        return "math";
    }
    let first = lower.split_whitespace().next().unwrap_or("");
    let wh = ["who", "what", "when", "where", "which", "why", "how", "is", "are", "was", "were", "does", "do", "did", "in", "name"];
    if t.chars().count() <= 200 && (t.ends_with('?') || wh.contains(&first)) && !t.contains('\n') {
        return "question";
    }
    "instruction"
}

/// The class's index in [`CLASSES`].
pub fn index(class: &str) -> usize {
    CLASSES.iter().position(|c| *c == class).unwrap_or(CLASSES.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_typical_prompts() {
        assert_eq!(classify("Is cutting hair a good or a service?\nChoices:\n(A): a service\n(B): a good"), "choice");
        assert_eq!(classify("Which gas?\n(A): neon\n(B): argon"), "choice");
        assert_eq!(classify("Weng earns $12 an hour for babysitting. Yesterday, she did 50 minutes. How much did she earn?"), "math");
        assert_eq!(classify("Which British city has cathedrals dedicated to St Nicholas and St Mary?"), "question");
        assert_eq!(classify("where was the very first tarzan movie filmed in 1917"), "question");
        assert_eq!(classify("Write a sentence using subordinating conjunctions."), "instruction");
        assert_eq!(classify(""), "instruction");
        assert_eq!(index("math"), 1);
        assert_eq!(index("nonsense"), 3);
    }

    #[test]
    fn agrees_with_the_dataset_labels_on_most_shared_prompts() {
        let Some(dir) = crate::testing::shared_data("sprout_artifact/requests") else { return };
        let expect = [("mmlu", "choice"), ("scienceqa", "choice"), ("math", "math"), ("triviaqa", "question"), ("naturalqa", "question"), ("alpaca", "instruction")];
        for (ds, class) in expect {
            let text = std::fs::read_to_string(dir.join(format!("{ds}_prompts.jsonl"))).unwrap();
            let (mut n, mut ok) = (0, 0);
            for line in text.lines().take(1000) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                n += 1;
                ok += (classify(v["prompt"].as_str().unwrap()) == class) as usize;
            }
            let share = ok as f64 / n as f64;
            eprintln!("{ds}: {:.1}% {class}", share * 100.0);
            assert!(share > 0.75, "{ds}: only {share} classified {class}");
        }
    }
}
