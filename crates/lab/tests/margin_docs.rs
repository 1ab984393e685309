//! The idle-close margin (how far linger's pool `idle_timeout` stays below an upstream's
//! idle close) is one constant, `linger_lab::check::IDLE_CLOSE_MARGIN`, which both
//! `linger check` and `linger probe` use. Every doc that states it must state that value.

use linger_lab::check::IDLE_CLOSE_MARGIN;
use linger_proxy::config::ConfigDuration;

const DOCS: [(&str, &str); 4] = [
    ("docs/config.md", include_str!("../../../docs/config.md")),
    ("docs/check.md", include_str!("../../../docs/check.md")),
    ("docs/probe.md", include_str!("../../../docs/probe.md")),
    (
        "docs/lifecycle.md",
        include_str!("../../../docs/lifecycle.md"),
    ),
];

/// How the docs state the value: "the idle-close margin, `500ms`".
const MARKER: &str = "idle-close margin, `";

#[test]
fn every_doc_states_the_idle_close_margin_of_the_code() {
    let code = ConfigDuration(IDLE_CLOSE_MARGIN).to_string();
    for (name, text) in DOCS {
        let stated: Vec<&str> = text
            .match_indices(MARKER)
            .map(|(at, _)| {
                let rest = &text[at + MARKER.len()..];
                &rest[..rest.find('`').expect("the value is closed by a backtick")]
            })
            .collect();
        assert!(
            !stated.is_empty(),
            "{name} must state the margin as \"{MARKER}{code}`\""
        );
        for value in stated {
            assert_eq!(
                value, code,
                "{name} states an idle-close margin of {value}; the code's is {code}"
            );
        }
    }
}
