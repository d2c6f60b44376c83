//! Native timing of the plugin's request pass on 4 KB and 100 KB chat requests (parse, scan,
//! rewrite). Ignored by default; run `cargo test --release -p palisade-plugin-pii --test speed
//! -- --ignored --nocapture`. The Wasm numbers through the gateway's chain are in
//! `gateway/benches/chain.rs` (`make bench`).

use palisade_plugin_pii::Pii;
use palisade_plugin_sdk::testing::{CallBuilder, Harness};

fn chat_body(bytes: usize) -> String {
    let mut text = String::new();
    let mut i = 0;
    while text.len() < bytes {
        text.push_str("The customer wrote in about order 48213 on 2024-03-08; please check the shipping status and reply politely. ");
        if i % 8 == 7 {
            text.push_str(&format!(
                "Contact: jane.doe{i}@example.com, +1 415 555 {:04}. ",
                i % 10000
            ));
        }
        i += 1;
    }
    serde_json::json!({"model": "m", "messages": [{"role": "user", "content": text}]}).to_string()
}

#[test]
#[ignore]
fn request_pass_timing() {
    for bytes in [4 * 1024, 100 * 1024] {
        let call = CallBuilder::llm("m").body(chat_body(bytes)).build();
        let n = if bytes < 10_000 { 2000 } else { 100 };
        let t = std::time::Instant::now();
        for _ in 0..n {
            let mut h = Harness::<Pii>::new(serde_json::json!({})).expect("config");
            std::hint::black_box(h.on_request(&call));
        }
        println!(
            "{bytes} bytes: {:?} per call (init + on-request)",
            t.elapsed() / n
        );
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(palisade_plugin_pii::detect::scan(
                &call.body,
                &Default::default(),
            ));
        }
        println!("{bytes} bytes: {:?} per scan alone", t.elapsed() / n);
    }
}
