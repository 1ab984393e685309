//! `docs/config.md` stays true to the code: its complete example names every key the code
//! has (and no other), each set to the code's default, and every key has a row in the
//! reference table of its section.

use std::collections::BTreeMap;

use linger_proxy::config::File;

const DOC: &str = include_str!("../../../docs/config.md");

/// A config with every section present once, as `linger check --print-config` writes it.
fn effective() -> toml::Value {
    let file = File::parse(
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[[route]]\ncluster = \"app\"\n\
         [[cluster]]\nname = \"app\"\nendpoints = [\"127.0.0.1:3000\"]\n",
        "defaults.toml",
    )
    .expect("the minimal config parses");
    toml::from_str(&file.to_toml()).expect("the effective config is TOML")
}

/// `section.key` → value, with arrays of tables flattened through their first element.
fn flatten(v: &toml::Value, prefix: &str, out: &mut BTreeMap<String, toml::Value>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(_) => flatten(v, &key, out),
                    toml::Value::Array(a) if a.first().is_some_and(toml::Value::is_table) => {
                        flatten(&a[0], &key, out)
                    }
                    _ => {
                        out.insert(key, v.clone());
                    }
                }
            }
        }
        _ => unreachable!("a config is a table"),
    }
}

fn keys(v: &toml::Value) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    flatten(v, "", &mut out);
    out
}

/// The TOML block under "## Complete example".
fn documented_example() -> toml::Value {
    let at = DOC
        .find("## Complete example")
        .expect("docs/config.md has a complete example");
    let rest = &DOC[at..];
    let start = rest.find("```toml\n").expect("a toml block") + 8;
    let end = start + rest[start..].find("```").expect("the block ends");
    toml::from_str(&rest[start..end]).expect("the complete example is valid TOML")
}

/// Keys with no default (required), or whose example value is an example by nature.
const EXAMPLE_VALUES: &[&str] = &[
    "listener.name",
    "listener.address",
    "route.cluster",
    "cluster.name",
    "cluster.endpoints",
];

#[test]
fn the_complete_example_has_every_key_at_its_default() {
    let code = keys(&effective());
    let doc = keys(&documented_example());
    let missing: Vec<_> = code.keys().filter(|k| !doc.contains_key(*k)).collect();
    let extra: Vec<_> = doc.keys().filter(|k| !code.contains_key(*k)).collect();
    assert!(missing.is_empty(), "keys the example lacks: {missing:?}");
    assert!(
        extra.is_empty(),
        "keys the example has that the code does not: {extra:?}"
    );
    for (k, v) in &code {
        if EXAMPLE_VALUES.contains(&k.as_str()) {
            continue;
        }
        assert_eq!(&doc[k], v, "{k}: the example's value is not the default");
    }
}

/// The reference table rows (`| \`key\` |`) between a heading and the next one.
fn table_keys(heading: &str) -> Vec<String> {
    let at = DOC
        .find(heading)
        .unwrap_or_else(|| panic!("docs/config.md has no heading {heading:?}"));
    let rest = &DOC[at + heading.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_key_has_a_row_in_its_sections_table() {
    let code = keys(&effective());
    let sections: &[(&str, &str)] = &[
        ("admin.", "## `[admin]`"),
        ("runtime.", "## `[runtime]`"),
        ("listener.tcp.", "## TCP options"),
        ("listener.headers.", "### `[listener.headers]`"),
        ("listener.", "## `[[listener]]`"),
        ("route.", "## `[[route]]`"),
        ("cluster.retry.", "### `[cluster.retry]`"),
        ("cluster.tcp.", "## TCP options"),
        ("cluster.", "## `[[cluster]]`"),
    ];
    let mut missing = Vec::new();
    for key in code.keys() {
        let (prefix, heading) = sections
            .iter()
            .find(|(p, _)| key.starts_with(p))
            .unwrap_or_else(|| panic!("{key}: no section of docs/config.md covers it"));
        let field = &key[prefix.len()..];
        if !table_keys(heading).iter().any(|k| k == field) {
            missing.push(format!("{key} (under {heading})"));
        }
    }
    assert!(missing.is_empty(), "keys without a table row: {missing:#?}");
}

#[test]
fn the_print_config_sample_is_what_the_code_prints() {
    let at = DOC
        .find("it prints (shortened):")
        .expect("the --print-config sample");
    let rest = &DOC[at..];
    let start = rest.find("```text\n").expect("a text block") + 8;
    let end = start + rest[start..].find("```").expect("the block ends");
    let shown: Vec<&str> = rest[start..end]
        .lines()
        .filter(|l| !l.starts_with('#') && *l != "...")
        .collect();
    // The sample's input, as the doc gives it just above.
    let input = "[[listener]]\naddress = \"127.0.0.1:8080\"\n\n[[cluster]]\nname = \"app\"\nendpoints = [\"127.0.0.1:3000\"]\n";
    assert!(DOC.contains(input), "the sample's input changed in the doc");
    let printed = File::parse(input, "min.toml").unwrap().to_toml();
    let printed: Vec<&str> = printed.lines().collect();
    // The sample is the start of the real output, after its comment line.
    let shown = &shown[shown.iter().position(|l| !l.is_empty()).unwrap()..];
    assert_eq!(
        &printed[..shown.len()],
        shown,
        "docs/config.md's --print-config sample drifted"
    );
}
