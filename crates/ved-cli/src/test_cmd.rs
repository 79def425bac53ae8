//! `ved test`: runs scenario blocks and reports like a test runner: text for people,
//! JSON lines for tools (`--format json`), and a JUnit XML file for CI (`--junit FILE`).

use crate::output::Format;
use crate::{exit, load};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use ved_runtime::scenario::{run_scenario, ScenarioReport};
use ved_syntax::SourceMap;

/// Standard output that a reader may close (`ved test | head`): once a write fails the
/// rest is dropped quietly, and the run goes on, so that `--junit` is still written and the
/// exit code still says whether every scenario passed.
struct Out {
    w: std::io::StdoutLock<'static>,
    closed: bool,
}

impl Out {
    fn line(&mut self, args: std::fmt::Arguments) {
        use std::io::Write;
        if !self.closed && writeln!(self.w, "{args}").is_err() {
            self.closed = true;
        }
    }
}

macro_rules! out {
    ($o:expr) => { $o.line(format_args!("")) };
    ($o:expr, $($t:tt)*) => { $o.line(format_args!($($t)*)) };
}

/// How `ved test` reports.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// Print the trace of every scenario, not only of failures.
    pub trace: bool,
    pub format: Format,
    pub junit: Option<PathBuf>,
}

/// Where a failure points: file, line, column (1-based, in characters) and the line.
struct Location {
    file: String,
    line: usize,
    column: usize,
    source: String,
}

fn location(report: &ScenarioReport, sources: &SourceMap) -> Option<Location> {
    let f = report.failure.as_ref()?;
    let file = sources.file(f.span.file);
    let (line, column) = file.line_col(f.span.start as usize);
    Some(Location { file: file.name.clone(), line, column, source: file.line_text(line).trim().to_string() })
}

pub fn test(files: &[PathBuf], seed: u64, filter: Option<&str>, out: &Output) -> ExitCode {
    let loaded = match load::load_or(files, exit::DATA) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let scenarios: Vec<_> =
        loaded.program.scenarios.iter().filter(|s| filter.is_none_or(|f| s.name.contains(f))).collect();
    if scenarios.is_empty() {
        eprintln!("warning: no scenario to run");
        eprintln!("  = hint: add a `scenario \"name\" {{ ... }}` block, or pass the file that holds them");
    }
    let mut o = Out { w: std::io::stdout().lock(), closed: false };
    let (mut passed, mut failed) = (0, 0);
    let mut results = Vec::new();
    let started = Instant::now();
    for sc in scenarios {
        let t = Instant::now();
        let report = run_scenario(&loaded.program, &loaded.compiled, sc, seed);
        let took = t.elapsed();
        if report.passed() {
            passed += 1;
        } else {
            failed += 1;
        }
        match out.format {
            Format::Text => print_text(&mut o, &report, &loaded.sources, out.trace),
            Format::Json => print_json(&mut o, &report, &loaded.sources, out.trace, took),
        }
        if out.junit.is_some() {
            results.push((report, took));
        }
    }
    match out.format {
        Format::Text => {
            out!(o);
            out!(o, "{passed} passed, {failed} failed");
        }
        Format::Json => out!(
            o,
            "{}",
            json!({"type": "summary", "passed": passed, "failed": failed,
                   "duration_ms": started.elapsed().as_secs_f64() * 1000.0})
        ),
    }
    if let Some(path) = &out.junit {
        let suite = files.first().map(|f| f.display().to_string()).unwrap_or_default();
        let xml = junit_xml(&suite, &results, &loaded.sources, started.elapsed());
        if let Err(e) = std::fs::write(path, xml) {
            eprintln!("error: cannot write the JUnit report {}: {e}", path.display());
            return exit::code(exit::IO);
        }
    }
    if failed > 0 {
        exit::code(exit::FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_text(o: &mut Out, report: &ScenarioReport, sources: &SourceMap, trace: bool) {
    if report.passed() {
        out!(o, "scenario \"{}\" ... ok", report.name);
        if trace {
            print_trace(o, report);
        }
    } else {
        out!(o, "scenario \"{}\" ... FAILED", report.name);
        print_failure(o, report, sources);
    }
}

fn print_json(o: &mut Out, report: &ScenarioReport, sources: &SourceMap, trace: bool, took: Duration) {
    let mut doc = json!({
        "type": "scenario",
        "name": report.name,
        "passed": report.passed(),
        "duration_ms": took.as_secs_f64() * 1000.0,
    });
    if let (Some(f), Some(at)) = (&report.failure, location(report, sources)) {
        doc["failure"] = json!({
            "message": f.message,
            "expected": f.expected,
            "actual": f.actual,
            "file": at.file,
            "line": at.line,
            "column": at.column,
            "source": at.source,
        });
    }
    if trace || !report.passed() {
        doc["trace"] = json!(report.trace);
    }
    out!(o, "{doc}");
}

fn print_failure(o: &mut Out, report: &ScenarioReport, sources: &SourceMap) {
    let (Some(f), Some(at)) = (&report.failure, location(report, sources)) else { return };
    out!(o, "  {}:{}:{}: {}", at.file, at.line, at.column, at.source);
    out!(o, "    {}", f.message);
    if !f.expected.is_empty() || !f.actual.is_empty() {
        out!(o, "    expected: {}", f.expected);
        out!(o, "    actual:   {}", f.actual);
    }
    print_trace(o, report);
}

fn print_trace(o: &mut Out, report: &ScenarioReport) {
    out!(o, "  trace:");
    for line in &report.trace {
        if !line.starts_with("tick ") {
            out!(o, "    {line}");
        } else {
            out!(o, "    -- {line}");
        }
    }
}

/// Escapes text for XML content and attribute values. Characters XML 1.0 forbids
/// (control characters other than tab and newlines) become `?`: no parser accepts them.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// A JUnit XML report: one `testsuite` named after the first file, one `testcase` per
/// scenario, a `failure` element (message attribute, details as text) per failed one.
/// The shape is the one Jenkins, GitLab and GitHub's test reporters read.
pub fn junit_xml(suite: &str, results: &[(ScenarioReport, Duration)], sources: &SourceMap, total: Duration) -> String {
    use std::fmt::Write as _;
    let failures = results.iter().filter(|(r, _)| !r.passed()).count();
    let suite = xml_escape(suite);
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"ved test\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">",
        results.len(),
        total.as_secs_f64()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{suite}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{:.3}\">",
        results.len(),
        total.as_secs_f64()
    );
    for (r, took) in results {
        let name = xml_escape(&r.name);
        let time = took.as_secs_f64();
        match (&r.failure, location(r, sources)) {
            (Some(f), Some(at)) => {
                let _ = writeln!(x, "    <testcase name=\"{name}\" classname=\"{suite}\" time=\"{time:.3}\">");
                let mut body = format!("{}:{}:{}: {}\n{}\n", at.file, at.line, at.column, at.source, f.message);
                if !f.expected.is_empty() || !f.actual.is_empty() {
                    let _ = write!(body, "expected: {}\nactual:   {}\n", f.expected, f.actual);
                }
                body.push_str("trace:\n");
                for line in &r.trace {
                    let _ = writeln!(body, "  {line}");
                }
                let _ = writeln!(
                    x,
                    "      <failure message=\"{}\" type=\"ScenarioFailed\">{}</failure>",
                    xml_escape(&f.message),
                    xml_escape(&body)
                );
                let _ = writeln!(x, "    </testcase>");
            }
            _ => {
                let _ = writeln!(x, "    <testcase name=\"{name}\" classname=\"{suite}\" time=\"{time:.3}\"/>");
            }
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}
