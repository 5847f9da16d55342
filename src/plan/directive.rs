//! Generation directives: choosing a level for a job and applying it to the
//! conversation. Pure functions, no IO.
//!
//! A directive is a system instruction ("Always answer briefly.") that makes
//! the model answer in fewer tokens. It is *added*: when the client sent its
//! own system message the directive is appended to it, so the client's
//! instructions are never lost.

use crate::config::DirectiveConfig;
use crate::job::{Message, Role};

/// The levels and the mix used when a request pins none.
#[derive(Debug, Clone)]
pub struct Directives {
    levels: Vec<(String, String)>,
    class_texts: Vec<std::collections::BTreeMap<String, String>>,
    mix: Vec<f64>,
    seed: u64,
}

impl Directives {
    pub fn new(cfg: &DirectiveConfig) -> Self {
        Self { levels: cfg.levels.clone(), class_texts: cfg.class_texts.clone(), mix: cfg.mix.clone(), seed: cfg.seed }
    }

    /// The instruction level `name` adds for a prompt of `class`: the
    /// class's own wording when the level has one, else the level's text.
    pub fn text_for(&self, name: &str, class: &str) -> Option<&str> {
        let i = self.levels.iter().position(|(n, _)| n == name)?;
        Some(self.class_texts.get(i).and_then(|m| m.get(class)).map(String::as_str).unwrap_or(&self.levels[i].1))
    }

    /// A fingerprint of every level's wordings: measurements of quality
    /// are kept per wording (a changed wording is measured afresh).
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0x5350_524f_5554;
        for (i, (name, text)) in self.levels.iter().enumerate() {
            let classes = self.class_texts.get(i).map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\u{1}")).unwrap_or_default();
            for b in format!("{name}\u{0}{text}\u{0}{classes}\u{2}").bytes() {
                h = splitmix64(h ^ b as u64);
            }
        }
        format!("{h:016x}")
    }

    /// The first level: no instruction added.
    pub fn baseline(&self) -> &str {
        self.levels.first().map(|(n, _)| n.as_str()).unwrap_or("L0")
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().map(|(n, _)| n.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.levels.iter().any(|(n, _)| n == name)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.levels.iter().find(|(n, _)| n == name).map(|(_, t)| t.as_str())
    }

    /// The level for job `seq`: the pinned one, else a draw from the mix that
    /// depends only on the configured seed and `seq` (so it is reproducible).
    pub fn choose(&self, pinned: Option<&str>, seq: u64) -> String {
        self.choose_from(pinned, seq, &self.mix)
    }

    /// As [`Self::choose`], drawing from `mix` (the optimizer's plan).
    pub fn choose_from(&self, pinned: Option<&str>, seq: u64, mix: &[f64]) -> String {
        if let Some(p) = pinned {
            return p.to_string();
        }
        let u = unit_interval(splitmix64(self.seed ^ splitmix64(seq)));
        let mut acc = 0.0;
        for ((name, _), w) in self.levels.iter().zip(mix) {
            acc += w;
            if u < acc {
                return name.clone();
            }
        }
        // Rounding left u at or above the last boundary: the last level with weight.
        self.levels
            .iter()
            .zip(mix)
            .rev()
            .find(|(_, w)| **w > 0.0)
            .map(|((n, _), _)| n.clone())
            .unwrap_or_else(|| self.levels[0].0.clone())
    }

    /// The conversation the engine sees for `level`, the prompt being of `class`.
    pub fn apply(&self, level: &str, class: &str, messages: &[Message]) -> Vec<Message> {
        let text = self.text_for(level, class).unwrap_or("");
        apply_directive(text, messages)
    }
}

/// Adds `directive` as a system message, appending it to the client's first
/// system message when there is one.
pub fn apply_directive(directive: &str, messages: &[Message]) -> Vec<Message> {
    let mut out = messages.to_vec();
    if directive.is_empty() {
        return out;
    }
    match out.iter_mut().find(|m| m.role == Role::System) {
        Some(sys) => {
            let sep = if sys.content.trim_end().is_empty() { "" } else { "\n\n" };
            sys.content = format!("{}{sep}{directive}", sys.content.trim_end());
        }
        None => out.insert(0, Message::new(Role::System, directive.to_string())),
    }
    out
}

/// A well-mixed 64-bit hash (SplitMix64's finalizer).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn unit_interval(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mix: &[f64]) -> Directives {
        Directives::new(&DirectiveConfig {
            levels: vec![
                ("L0".into(), "".into()),
                ("L1".into(), "Always answer briefly.".into()),
                ("L2".into(), "Always answer very briefly.".into()),
            ],
            class_texts: vec![Default::default(), [("math".to_string(), "Short steps, then the answer.".to_string())].into(), Default::default()],
            mix: mix.to_vec(),
            seed: 7,
        })
    }

    fn user(t: &str) -> Message {
        Message::new(Role::User, t)
    }

    #[test]
    fn directive_becomes_a_system_message() {
        let d = cfg(&[1.0, 0.0, 0.0]);
        let out = d.apply("L2", "question", &[user("hi")]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], Message::new(Role::System, "Always answer very briefly."));
        assert_eq!(out[1], user("hi"));
    }

    #[test]
    fn directive_is_appended_to_the_clients_system_message() {
        let d = cfg(&[1.0, 0.0, 0.0]);
        let msgs = [Message::new(Role::System, "You are a pirate. "), user("hi")];
        let out = d.apply("L1", "question", &msgs);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].content, "You are a pirate.\n\nAlways answer briefly.");
    }

    #[test]
    fn l0_leaves_the_conversation_alone() {
        let d = cfg(&[1.0, 0.0, 0.0]);
        let msgs = [user("hi")];
        assert_eq!(d.apply("L0", "math", &msgs), msgs.to_vec());
    }

    #[test]
    fn a_class_may_have_its_own_wording() {
        let d = cfg(&[1.0, 0.0, 0.0]);
        assert_eq!(d.apply("L1", "math", &[user("2+2?")])[0].content, "Short steps, then the answer.");
        assert_eq!(d.apply("L1", "choice", &[user("A or B?")])[0].content, "Always answer briefly.");
        assert_eq!(d.text_for("L9", "math"), None);
        let mut other = cfg(&[1.0, 0.0, 0.0]);
        assert_eq!(other.fingerprint(), d.fingerprint());
        other.class_texts[1].insert("math".into(), "Steps.".into());
        assert_ne!(other.fingerprint(), d.fingerprint());
    }

    #[test]
    fn pinned_level_wins_and_draws_follow_the_mix() {
        let d = cfg(&[0.5, 0.3, 0.2]);
        assert_eq!(d.choose(Some("L1"), 3), "L1");
        let n = 20_000;
        let mut counts = [0usize; 3];
        for seq in 0..n {
            let l = d.choose(None, seq);
            counts[l[1..].parse::<usize>().unwrap()] += 1;
        }
        for (c, w) in counts.iter().zip([0.5, 0.3, 0.2]) {
            let share = *c as f64 / n as f64;
            assert!((share - w).abs() < 0.02, "share {share} vs {w}");
        }
        // Reproducible per job.
        assert_eq!(d.choose(None, 1234), d.choose(None, 1234));
    }

    #[test]
    fn a_level_with_zero_weight_is_never_drawn() {
        let d = cfg(&[0.0, 0.0, 1.0]);
        assert!((0..1000).all(|s| d.choose(None, s) == "L2"));
    }
}
