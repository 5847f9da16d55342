//! Final answers read from answer text (pure): the number a math answer ends
//! on, the option letter a multiple-choice answer names, the words a short
//! factual answer gives. Two users of the same functions: the evaluator's
//! reference-free agreement signal (does a shorter answer reach the same
//! final answer as L0's?) and `sproutctl bench`'s scoring against
//! references, so what the daemon estimates and what the bench measures are
//! read the same way.

/// Lower case, punctuation to spaces, whitespace collapsed.
pub fn normalize(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() || c.is_whitespace() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last number in the text (thousands separators dropped): GSM8K-style
/// answers end on it.
pub fn last_number(s: &str) -> Option<f64> {
    let cleaned = s.replace(',', "");
    let mut last = None;
    let mut cur = String::new();
    for c in cleaned.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() || (c == '.' && !cur.is_empty()) || (c == '-' && cur.is_empty()) {
            cur.push(c);
        } else {
            if let Ok(v) = cur.trim_end_matches('.').parse::<f64>() {
                last = Some(v);
            }
            cur.clear();
        }
    }
    last
}

/// The option letter (A-E) an answer picks: an explicit "answer is X" /
/// "Answer: X" wins, then a marked option ("(B)", "B)", "B:", "B." at the start
/// of a line or the text), then the first capital A-J standing alone that is
/// not the article "A" starting a sentence.
pub fn choice_letter(s: &str) -> Option<char> {
    let is_opt = |c: char| ('A'..='E').contains(&c);
    // ASCII case folding keeps byte offsets, so positions found in `lower`
    // index `s` (full Unicode lowering changes some characters' lengths).
    let lower = s.to_ascii_lowercase();
    for marker in ["answer is", "answer:", "correct option is", "correct choice is", "option"] {
        if let Some(pos) = lower.find(marker) {
            let rest = &s[pos + marker.len()..];
            let t = rest.trim_start_matches(|c: char| c.is_whitespace() || "*:(\"'".contains(c));
            let mut it = t.chars();
            if let (Some(c), next) = (it.next(), it.next()) {
                if is_opt(c) && next.is_none_or(|n| !n.is_alphanumeric()) {
                    return Some(c);
                }
            }
        }
    }
    for line in s.lines() {
        let t = line.trim_start_matches(|c: char| c.is_whitespace() || c == '*' || c == '(');
        let mut it = t.chars();
        if let (Some(c), Some(n)) = (it.next(), it.next()) {
            if is_opt(c) && (n == ')' || n == ':' || n == '.') {
                return Some(c);
            }
        }
    }
    let chars: Vec<char> = s.chars().collect();
    for i in 0..chars.len() {
        let c = chars[i];
        if !is_opt(c) {
            continue;
        }
        let prev = if i > 0 { chars[i - 1] } else { ' ' };
        let next = chars.get(i + 1).copied().unwrap_or(' ');
        if prev.is_alphanumeric() || next.is_alphanumeric() || next == '\'' {
            continue;
        }
        // "A" followed by a space and a lower-case word is the article.
        if c == 'A' && next == ' ' && chars.get(i + 2).is_some_and(|w| w.is_lowercase()) {
            continue;
        }
        return Some(c);
    }
    None
}

const STOPWORDS: &[&str] = &[
    "a", "an", "the", "of", "in", "on", "at", "to", "is", "was", "are", "were", "be", "by", "for", "and", "or", "it", "its",
    "as", "that", "this", "with", "from", "answer", "final", "he", "she", "they", "his", "her", "their", "has", "had", "have",
];

/// The content words of a short answer (stop words dropped).
pub fn content_words(s: &str) -> Vec<String> {
    normalize(s).split_whitespace().filter(|w| !STOPWORDS.contains(w)).map(str::to_string).collect()
}

/// Short answers longer than this many content words are not compared
/// word by word (they disagree, conservatively).
pub const SHORT_ANSWER_WORDS: usize = 12;

/// Whether two answers to a class's prompt reach the same final answer;
/// None when the class has no extractable final form (`instruction`), or
/// the baseline's answer has none (nothing to agree with).
///
/// - `math`: the same last number;
/// - `choice`: the same option letter;
/// - `question`: every content word of the shorter answer appears in the
///   longer one, the shorter having at most [`SHORT_ANSWER_WORDS`] of them.
pub fn agree(class: &str, baseline: &str, other: &str) -> Option<bool> {
    match class {
        "math" => {
            let b = last_number(baseline)?;
            Some(last_number(other).is_some_and(|o| (o - b).abs() < 1e-6))
        }
        "choice" => {
            let b = choice_letter(baseline)?;
            Some(choice_letter(other) == Some(b))
        }
        "question" => {
            let (b, o) = (content_words(baseline), content_words(other));
            if b.is_empty() {
                return None;
            }
            if b == o {
                return Some(true);
            }
            let (short, long) = if o.len() <= b.len() { (o, b) } else { (b, o) };
            if short.is_empty() || short.len() > SHORT_ANSWER_WORDS {
                return Some(false);
            }
            Some(short.iter().all(|w| long.contains(w)))
        }
        _ => None,
    }
}

/// The one-sided lower confidence bound of a proportion (Wilson score
/// interval): `successes` of `n`, at `z` (1.645 for 95% one-sided). 0 when
/// there is no sample.
pub fn wilson_lower(successes: f64, n: f64, z: f64) -> f64 {
    if n <= 0.0 {
        return 0.0;
    }
    let p = (successes / n).clamp(0.0, 1.0);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - spread) / (1.0 + z2 / n)).max(0.0)
}

/// The Wilson score interval's upper end for `successes` of `n` at `z`
/// (1 with no trials).
pub fn wilson_upper(successes: f64, n: f64, z: f64) -> f64 {
    if n <= 0.0 {
        return 1.0;
    }
    1.0 - wilson_lower(n - successes, n, z)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `scripts/fuzz.sh` (judge_verdict): "Ⱦ" lowercases to a longer
    /// character, so a marker's position in the lowered text sliced the
    /// original text inside a character.
    #[test]
    fn fuzz_regression_a_marker_after_a_character_whose_lowercase_is_longer() {
        let input = b"\x00\x03..on\x00\x00\xc8\xbeA.\x00\x00\x00\x00\x03..on\x00\x00\xc8\xbeA.\x00\x00\x00\x00C\x00mp$a\"anower:\xc8\xbe\x00\x00C\x00mp$a\"answer:\xc8\xbe\x00";
        let text = std::str::from_utf8(input).unwrap();
        let _ = choice_letter(text); // no panic is the point
        assert_eq!(choice_letter("ȾȾȾ answer: B"), Some('B'));
        for class in ["math", "choice", "question", "instruction"] {
            let _ = agree(class, text, "ȾȾ Answer: (C)");
        }
    }

    #[test]
    fn numbers_letters_and_words() {
        assert_eq!(last_number("She earns 12 * 50 / 60 = $10.\nThe answer is 1,010."), Some(1010.0));
        assert_eq!(last_number("no digits"), None);
        assert_eq!(choice_letter("The answer is (C): 24"), Some('C'));
        assert_eq!(choice_letter("A good question. B) is right because..."), Some('B'));
        assert_eq!(choice_letter("**B**: 2"), Some('B'));
        assert_eq!(choice_letter("A factor of 4 means D is correct"), Some('D'));
        assert_eq!(choice_letter("I am not sure."), None);
        assert_eq!(content_words("The Beaujolais region."), ["beaujolais", "region"]);
    }

    #[test]
    fn agreement_per_class() {
        assert_eq!(agree("math", "5 + 7 = 12 apples. So 12.", "12"), Some(true));
        assert_eq!(agree("math", "So 12.", "13"), Some(false));
        assert_eq!(agree("math", "I cannot tell.", "13"), None, "no baseline answer to agree with");
        assert_eq!(agree("choice", "Let us see... The answer is (B).", "B"), Some(true));
        assert_eq!(agree("choice", "The answer is (B).", "(C): 24"), Some(false));
        assert_eq!(agree("question", "The wines come from the Beaujolais region of France.", "Beaujolais"), Some(true));
        assert_eq!(agree("question", "The wines come from the Beaujolais region.", "Burgundy"), Some(false));
        assert_eq!(agree("question", "Neil Armstrong", "It was Neil Armstrong, in 1969."), Some(true));
        assert_eq!(agree("instruction", "a poem", "a haiku"), None);
        // The same long answer agrees with itself; two different long ones do not.
        let long = "The first moon landing was in July 1969, when the Apollo 11 crew of Neil Armstrong, Buzz Aldrin and Michael Collins flew there.";
        assert_eq!(agree("question", long, long), Some(true));
        assert_eq!(agree("question", long, &long.replace("1969", "1970")), Some(false));
    }

    #[test]
    fn the_wilson_bound_tightens_with_samples() {
        // All agree: the bound rises with n toward 1 and is below it.
        let b10 = wilson_lower(10.0, 10.0, 1.645);
        let b30 = wilson_lower(30.0, 30.0, 1.645);
        let b100 = wilson_lower(100.0, 100.0, 1.645);
        assert!(b10 < b30 && b30 < b100 && b100 < 1.0, "{b10} {b30} {b100}");
        assert!((b10 - 10.0 / (10.0 + 1.645f64.powi(2))).abs() < 1e-12);
        // The same share with more samples: a tighter (higher) bound.
        assert!(wilson_lower(9.0, 10.0, 1.645) < wilson_lower(90.0, 100.0, 1.645));
        assert!(wilson_lower(90.0, 100.0, 1.645) < 0.9);
        assert_eq!(wilson_lower(0.0, 0.0, 1.645), 0.0);
    }
}
