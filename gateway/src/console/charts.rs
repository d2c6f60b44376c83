//! Bar charts drawn by the server as SVG (maud markup, so labels are escaped like any text):
//! no chart library and no script reach the browser.

use maud::{Markup, html};

/// One bar: its label under the axis (may be empty), its value, and the part of it drawn in
/// the warning colour (denials within calls; 0 for none).
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub alert: f64,
}

const W: f64 = 560.0;
const H: f64 = 170.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 22.0;

/// A bar chart titled `title`; `fmt` writes the axis maximum.
pub fn bars(id: &str, title: &str, bars: &[Bar], fmt: impl Fn(f64) -> String) -> Markup {
    let max = bars.iter().map(|b| b.value).fold(0.0_f64, f64::max);
    let scale = if max > 0.0 {
        (H - TOP - BOTTOM) / max
    } else {
        0.0
    };
    let n = bars.len().max(1) as f64;
    let slot = (W - LEFT - 8.0) / n;
    let bar_w = (slot * 0.75).max(1.0);
    let base = H - BOTTOM;
    // Every label would crowd the axis; show about eight.
    let every = (bars.len() / 8).max(1);
    html! {
        svg id=(id) xmlns="http://www.w3.org/2000/svg" width=(W) height=(H)
            viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(title) {
            text x="8" y="15" font-weight="600" { (title) }
            line x1=(LEFT) y1=(base) x2=(W - 4.0) y2=(base) stroke="#9fb0c6" {}
            text x="4" y=(TOP + 8.0) { (fmt(max)) }
            text x="4" y=(base) { (fmt(0.0)) }
            @for (i, b) in bars.iter().enumerate() {
                @let x = LEFT + i as f64 * slot + (slot - bar_w) / 2.0;
                @let h = b.value * scale;
                @let a = b.alert.min(b.value) * scale;
                rect x=(fmt2(x)) y=(fmt2(base - h)) width=(fmt2(bar_w)) height=(fmt2(h)) fill="#5aa9ff" {
                    title { (b.label) ": " (fmt(b.value)) }
                }
                @if a > 0.0 {
                    rect x=(fmt2(x)) y=(fmt2(base - a)) width=(fmt2(bar_w)) height=(fmt2(a)) fill="#d0443a" {}
                }
                @if i % every == 0 && !b.label.is_empty() {
                    text x=(fmt2(x)) y=(H - 6.0) { (b.label) }
                }
            }
        }
    }
}

fn fmt2(v: f64) -> String {
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_empty_data_draws() {
        let svg = bars(
            "c",
            "calls <b>",
            &[Bar {
                label: "<script>".into(),
                value: 3.0,
                alert: 1.0,
            }],
            |v| format!("{v}"),
        )
        .into_string();
        assert!(svg.contains("&lt;script&gt;") && !svg.contains("<script>"));
        assert!(
            bars("e", "none", &[], |v| format!("{v}"))
                .into_string()
                .contains("<svg")
        );
    }
}
