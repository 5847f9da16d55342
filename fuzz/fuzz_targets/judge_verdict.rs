//! A judge model's reply naming the best of n answers, and the final-answer
//! extraction the evaluator's agreement signal uses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for n in 1..=4 {
        if let Some(k) = sprout::eval::judge::parse_verdict(text, n) {
            assert!((1..=n).contains(&k), "verdict {k} out of {n} answers");
        }
    }
    let (a, b) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map(|(i, _)| i).unwrap_or(0));
    for class in ["math", "choice", "question", "instruction"] {
        let _ = sprout::eval::answers::agree(class, a, b);
    }
});
