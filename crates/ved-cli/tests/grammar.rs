//! The TextMate grammar of editors/vscode: well-formed, every regex compiles, and a
//! small tokenizer with TextMate's rule (the earliest match wins, ties go to the
//! first pattern) gives the scopes an editor would show. Without VS Code here, this
//! is the check that the highlighting is right. `fancy-regex` stands in for
//! Oniguruma: the grammar sticks to the syntax both share (lookahead included).

use fancy_regex::Regex;
use serde_json::Value;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn grammar() -> Value {
    let path = root().join("editors/vscode/syntaxes/ved.tmLanguage.json");
    let text = std::fs::read_to_string(&path).expect("the grammar exists");
    serde_json::from_str(&text).expect("the grammar is JSON")
}

/// A pattern of the grammar, includes resolved, in order.
struct Rule {
    name: Option<String>,
    re: Regex,
    /// For a `begin`/`end` rule: where it ends (its inner patterns are not needed here).
    end: Option<Regex>,
    /// A `begin`/`end` rule's inner patterns: an escaped quote does not end a string.
    inner: Vec<Regex>,
    captures: Vec<(usize, String)>,
}

fn compile(re: &str) -> Regex {
    Regex::new(re).unwrap_or_else(|e| panic!("regex {re:?} does not compile: {e}"))
}

fn flatten(g: &Value, patterns: &Value, out: &mut Vec<Rule>) {
    for p in patterns.as_array().expect("patterns is an array") {
        if let Some(inc) = p["include"].as_str() {
            let key = inc.strip_prefix('#').expect("includes are repository references");
            let target = &g["repository"][key];
            assert!(target.is_object(), "`{inc}` is not in the repository");
            flatten(g, &Value::Array(vec![target.clone()]), out);
        } else if p.get("patterns").is_some() && p.get("begin").is_none() {
            flatten(g, &p["patterns"], out);
        } else {
            let name = p["name"].as_str().map(str::to_string);
            let captures = p["captures"]
                .as_object()
                .map(|c| c.iter().map(|(k, v)| (k.parse().unwrap(), v["name"].as_str().unwrap().to_string())).collect())
                .unwrap_or_default();
            let (re, end) = match (p["match"].as_str(), p["begin"].as_str()) {
                (Some(m), None) => (compile(m), None),
                (None, Some(b)) => (compile(b), Some(compile(p["end"].as_str().expect("a begin has an end")))),
                _ => panic!("a pattern needs `match` or `begin`: {p}"),
            };
            let inner = p["patterns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["match"].as_str())
                .map(compile)
                .collect();
            out.push(Rule { name, re, end, inner, captures });
        }
    }
}

fn rules() -> Vec<Rule> {
    let g = grammar();
    assert_eq!(g["scopeName"], "source.ved");
    assert_eq!(g["fileTypes"], serde_json::json!(["ved"]));
    let mut out = Vec::new();
    flatten(&g, &g["patterns"], &mut out);
    out
}

/// Tokens of one line: (text, scope), unscoped text (identifiers, spaces) left out.
fn tokenize(rules: &[Rule], line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < line.len() {
        let best = rules
            .iter()
            .filter_map(|r| r.re.captures_from_pos(line, pos).ok().flatten().map(|c| (c, r)))
            .filter(|(c, _)| c.get(0).is_some_and(|m| m.end() > m.start()))
            .min_by_key(|(c, _)| c.get(0).unwrap().start());
        let Some((caps, rule)) = best else { break };
        let m = caps.get(0).unwrap();
        let mut end = m.end();
        if let Some(endre) = &rule.end {
            // Inside: an inner pattern that starts before the end is skipped over.
            loop {
                let e = endre.find_from_pos(line, end).ok().flatten();
                let i = rule
                    .inner
                    .iter()
                    .filter_map(|re| re.find_from_pos(line, end).ok().flatten())
                    .min_by_key(|m| m.start());
                match (e, i) {
                    (Some(e), Some(i)) if i.start() < e.start() && i.end() > end => end = i.end(),
                    (Some(e), _) => {
                        end = e.end();
                        break;
                    }
                    (None, _) => {
                        end = line.len();
                        break;
                    }
                }
            }
        }
        if let Some(name) = &rule.name {
            out.push((line[m.start()..end].to_string(), name.clone()));
        }
        for (i, scope) in &rule.captures {
            if let Some(g) = caps.get(*i) {
                out.push((g.as_str().to_string(), scope.clone()));
            }
        }
        pos = end;
    }
    out
}

fn scope_of(rules: &[Rule], line: &str, word: &str) -> String {
    tokenize(rules, line)
        .into_iter()
        .find(|(t, _)| t == word)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("`{word}` gets no scope in {line:?}: {:?}", tokenize(rules, line)))
}

#[test]
fn every_regex_compiles_and_includes_resolve() {
    assert!(rules().len() > 10);
}

#[test]
fn constructs_get_their_scopes() {
    let r = rules();
    assert_eq!(scope_of(&r, "domain WorkerPool {", "domain"), "keyword.declaration.domain.ved");
    assert_eq!(scope_of(&r, "domain WorkerPool {", "WorkerPool"), "entity.name.type.domain.ved");
    assert_eq!(scope_of(&r, "optimistic transition scale_up {", "scale_up"), "entity.name.function.transition.ved");
    assert_eq!(scope_of(&r, "goal Healthy {", "Healthy"), "entity.name.function.goal.ved");
    // The shorthand goal's first word is a field, not a goal name.
    assert!(tokenize(&r, "goal workers == 5").iter().all(|(t, _)| t != "workers"));
    assert_eq!(scope_of(&r, "  state {", "state"), "keyword.declaration.block.ved");
    assert_eq!(scope_of(&r, "  verify { workers in 0..20 }", "verify"), "keyword.declaration.block.ved");
    assert_eq!(scope_of(&r, "scenario \"x\" {", "\"x\""), "string.quoted.double.ved");
    assert_eq!(scope_of(&r, "emit Pool.start(1)", "Pool"), "entity.name.namespace.adapter.ved");
    assert_eq!(scope_of(&r, "emit Pool.start(1)", "start"), "entity.name.function.action.ved");
    assert_eq!(scope_of(&r, "  advance 5m", "5m"), "constant.numeric.duration.ved");
    assert_eq!(scope_of(&r, "  advance 500ms", "500ms"), "constant.numeric.duration.ved");
    assert_eq!(scope_of(&r, "x == 42", "42"), "constant.numeric.integer.ved");
    assert_eq!(scope_of(&r, "x == 42", "=="), "keyword.operator.ved");
    assert_eq!(scope_of(&r, "a && b", "&&"), "keyword.operator.ved");
    assert_eq!(scope_of(&r, "names: list<string>", "list"), "storage.type.ved");
    assert_eq!(scope_of(&r, "xs.length > 0", "length"), "support.function.member.ved");
    assert_eq!(scope_of(&r, "x = 1 // a note", "// a note"), "comment.line.double-slash.ved");
    // Keywords inside strings and comments stay strings and comments.
    assert_eq!(
        tokenize(&r, "\"if \\\"domain\\\"\""),
        [("\"if \\\"domain\\\"\"".into(), "string.quoted.double.ved".into())]
    );
    assert_eq!(tokenize(&r, "// if domain").len(), 1);
}

/// Every word docs/reference.md's lexical section names as reserved or as a keyword
/// is highlighted as a keyword or a constant.
#[test]
fn every_keyword_of_the_reference_is_covered() {
    let r = rules();
    let doc = std::fs::read_to_string(root().join("docs/reference.md")).unwrap();
    let start = doc.find("## 2. Lexical structure").expect("the lexical section");
    let section = &doc[start..start + doc[start..].find("\n## 3.").unwrap()];
    let para = |marker: &str| -> Vec<String> {
        let at = section.find(marker).unwrap_or_else(|| panic!("`{marker}` in §2"));
        let text = &section[at..at + section[at..].find("\n- ").unwrap_or(section.len() - at)];
        text.split('`').skip(1).step_by(2).flat_map(|s| s.split_whitespace().map(str::to_string)).collect()
    };
    let mut words = para("**Reserved words**");
    assert!(words.len() >= 12, "{words:?}");
    // The scenario step words the reference's §12 and the parser use.
    words.extend(
        "given observe simultaneously fail advance hold intents answer oldest newest failed watch expect stable \
         stuck livelock waiting degraded within ticks emitted not faulted fired times verify in"
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string),
    );
    for w in words.iter().filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_')) {
        let scope = scope_of(&r, w, w);
        assert!(
            scope.starts_with("keyword.") || scope.starts_with("constant.language") || scope.starts_with("storage."),
            "`{w}` is highlighted as {scope}"
        );
    }
}

/// The examples tokenize without a regex error, and every `domain` line names its domain.
#[test]
fn the_examples_tokenize() {
    let r = rules();
    let mut domains = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "ved") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let tokens = tokenize(&r, line);
                if line.trim_start().starts_with("domain ") && !line.trim_start().starts_with("domain \"") {
                    assert!(tokens.iter().any(|(_, s)| s == "entity.name.type.domain.ved"), "{line:?}: {tokens:?}");
                    domains += 1;
                }
            }
        }
    }
    assert!(domains > 0);
}
