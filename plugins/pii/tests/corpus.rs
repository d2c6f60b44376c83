//! Detection quality on the labelled corpus (`corpus/corpus.jsonl`, written by `corpus/gen.py`):
//! precision and recall per kind, printed, and held to recall ≥ 0.98 and precision ≥ 0.95.
//!
//! A detection counts as a true positive when its kind and exact text equal a labelled span of
//! its line; every other detection is a false positive, every labelled span not detected a false
//! negative.

use palisade_plugin_pii::detect::{Detectors, KINDS, Kind, scan};

#[derive(serde::Deserialize)]
struct Line {
    text: String,
    spans: Vec<Span>,
}

#[derive(serde::Deserialize)]
struct Span {
    kind: String,
    value: String,
}

#[test]
fn precision_and_recall_per_kind() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/corpus.jsonl");
    let text = std::fs::read_to_string(path).expect("read the corpus");
    let (mut tp, mut fp, mut fne) = ([0u32; 7], [0u32; 7], [0u32; 7]);
    let mut negatives = 0;
    let mut problems = Vec::new();
    let d = Detectors::default();
    for (n, raw) in text.lines().enumerate() {
        let line: Line = serde_json::from_str(raw).expect("corpus line is JSON");
        if line.spans.is_empty() {
            negatives += 1;
        }
        let found: Vec<(Kind, &str)> = scan(&line.text, &d)
            .into_iter()
            .map(|m| (m.kind, &line.text[m.start..m.end]))
            .collect();
        let labels: Vec<(Kind, &str)> = line
            .spans
            .iter()
            .map(|s| {
                (
                    Kind::from_name(&s.kind).expect("known kind"),
                    s.value.as_str(),
                )
            })
            .collect();
        for f in &found {
            if labels.contains(f) {
                tp[f.0 as usize] += 1;
            } else {
                fp[f.0 as usize] += 1;
                problems.push(format!(
                    "line {}: false {:?} {:?} in {:?}",
                    n + 1,
                    f.0,
                    f.1,
                    line.text
                ));
            }
        }
        for l in &labels {
            if !found.contains(l) {
                fne[l.0 as usize] += 1;
                problems.push(format!(
                    "line {}: missed {:?} {:?} in {:?}",
                    n + 1,
                    l.0,
                    l.1,
                    line.text
                ));
            }
        }
    }
    for p in &problems {
        println!("{p}");
    }
    println!(
        "corpus: {} lines, {negatives} negatives",
        text.lines().count()
    );
    println!(
        "{:<8} {:>5} {:>4} {:>4} {:>9} {:>7}",
        "kind", "tp", "fp", "fn", "precision", "recall"
    );
    let mut bad = Vec::new();
    for k in KINDS {
        let i = k as usize;
        let p = f64::from(tp[i]) / f64::from((tp[i] + fp[i]).max(1));
        let r = f64::from(tp[i]) / f64::from((tp[i] + fne[i]).max(1));
        println!(
            "{:<8} {:>5} {:>4} {:>4} {:>9.3} {:>7.3}",
            k.name(),
            tp[i],
            fp[i],
            fne[i],
            p,
            r
        );
        if p < 0.95 || r < 0.98 {
            bad.push(format!("{}: precision {p:.3}, recall {r:.3}", k.name()));
        }
    }
    assert!(bad.is_empty(), "below target: {bad:?}");
}
