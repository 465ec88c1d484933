//! Prometheus expositions read and merged: corral's own series and every worker's, in one
//! Prometheus text exposition (format 0.0.4), each family once with one `HELP` and `TYPE`.
//!
//! Workers answer in the text format or in OpenMetrics 1.0 (prom-client, prometheus_client and
//! client_golang do either). Both are read here into the text format's families, which hold
//! both without loss of series: an OpenMetrics counter `x` becomes the family `x_total`, an
//! info `x` the gauge `x_info`, a stateset and a gauge histogram gauges. What the text format has
//! no place for is dropped: `_created` series, exemplars, `# UNIT`, and timestamps (a worker's
//! samples are as of corral's scrape). Crates that parse expositions (`prometheus-parse`) keep
//! neither the format's escapes nor OpenMetrics' families, and merging needs both, so this is
//! written here.
//!
//! A worker's text is validated line by line: one line that the text format's parser (the one in
//! Prometheus and promtool) would refuse makes the whole answer refused, so one worker sending
//! garbage can never break the exposition of the pool.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

/// A family's type, as the text format names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }
}

/// A type as the input declares it (`# TYPE`), in either format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Declared {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
    Info,
    StateSet,
    GaugeHistogram,
}

impl Declared {
    fn parse(s: &str) -> Option<Declared> {
        Some(match s {
            "counter" => Declared::Counter,
            "gauge" => Declared::Gauge,
            "histogram" => Declared::Histogram,
            "summary" => Declared::Summary,
            "untyped" | "unknown" => Declared::Untyped,
            "info" => Declared::Info,
            "stateset" => Declared::StateSet,
            "gaugehistogram" => Declared::GaugeHistogram,
            _ => return None,
        })
    }
}

/// Label pairs as written between the braces: names validated, values with their escapes.
pub type Labels = Vec<(String, String)>;

/// One sample: its name (a family's, or with a suffix such as `_bucket`), its labels as the text
/// format writes them between the braces (validated, escapes kept), and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: String,
}

/// A family of the text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub kind: Kind,
    /// Unescaped.
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// An exposition read into families, by name.
pub type Families = BTreeMap<String, Family>;

/// Why a worker's answer was refused: the first line that is wrong, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct Invalid {
    pub line: usize,
    pub what: String,
}

fn invalid(line: usize, what: impl Into<String>) -> Invalid {
    Invalid { line, what: what.into() }
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Read an exposition (the text format, or OpenMetrics when `openmetrics`) into families.
pub fn parse(text: &str, openmetrics: bool) -> Result<Families, Invalid> {
    let mut declared: HashMap<&str, Declared> = HashMap::new();
    let mut help: HashMap<&str, String> = HashMap::new();
    let mut out = Families::new();
    let mut seen: HashSet<(String, Labels)> = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            let mut words = rest.splitn(3, ' ');
            let keyword = words.next().unwrap_or("");
            match keyword {
                "HELP" | "TYPE" | "UNIT" => {
                    let name = words.next().unwrap_or("");
                    if !is_metric_name(name) {
                        return Err(invalid(n, format!("bad metric name {name:?} in # {keyword}")));
                    }
                    let value = words.next().unwrap_or("");
                    if keyword == "HELP" {
                        help.insert(name, unescape_help(value, openmetrics).map_err(|e| invalid(n, e))?);
                    } else if keyword == "TYPE" {
                        let t = Declared::parse(value.trim())
                            .ok_or_else(|| invalid(n, format!("unknown type {value:?} for {name}")))?;
                        if declared.insert(name, t).is_some_and(|old| old != t) {
                            return Err(invalid(n, format!("{name} declared twice with different types")));
                        }
                    }
                }
                "EOF" if openmetrics => break,
                _ => {} // a comment
            }
            continue;
        }
        let (name, labels, value) = sample_line(line).map_err(|e| invalid(n, e))?;
        let Some((family, kind, from)) = place(name, &declared) else { continue };
        if !seen.insert((name.to_string(), labels.clone())) {
            continue; // the same series twice: the first one counts
        }
        let f =
            out.entry(family).or_insert_with(|| Family { kind, help: help.get(from).cloned(), samples: Vec::new() });
        if f.kind != kind {
            return Err(invalid(n, format!("{name} belongs to a {} family and a {}", f.kind.as_str(), kind.as_str())));
        }
        if f.help.is_none() {
            f.help = help.get(from).cloned();
        }
        f.samples.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(out)
}

/// Where a sample goes in the text format: (family, type, the name its `# HELP` is under), or
/// nowhere (`_created`, and samples a declared family cannot have).
fn place<'a>(name: &'a str, declared: &HashMap<&'a str, Declared>) -> Option<(String, Kind, &'a str)> {
    if let Some((_, t)) = declared.get_key_value(name) {
        return match t {
            Declared::Counter => Some((name.into(), Kind::Counter, name)),
            Declared::Gauge | Declared::StateSet => Some((name.into(), Kind::Gauge, name)),
            Declared::Untyped => Some((name.into(), Kind::Untyped, name)),
            Declared::Summary => Some((name.into(), Kind::Summary, name)),
            Declared::Histogram | Declared::Info | Declared::GaugeHistogram => None,
        };
    }
    const SUFFIXES: [&str; 8] = ["_total", "_created", "_bucket", "_count", "_sum", "_info", "_gsum", "_gcount"];
    for suffix in SUFFIXES {
        let Some(base) = name.strip_suffix(suffix) else { continue };
        let Some((base, t)) = declared.get_key_value(base) else { continue };
        return match (t, suffix) {
            (_, "_created") => None,
            (Declared::Counter, "_total") => Some((name.into(), Kind::Counter, base)),
            (Declared::Histogram, "_bucket" | "_sum" | "_count") => Some(((*base).into(), Kind::Histogram, base)),
            (Declared::Summary, "_sum" | "_count") => Some(((*base).into(), Kind::Summary, base)),
            (Declared::Info, "_info") | (Declared::GaugeHistogram, "_bucket" | "_gsum" | "_gcount") => {
                Some((name.into(), Kind::Gauge, base))
            }
            _ => Some((name.into(), Kind::Untyped, name)),
        };
    }
    Some((name.into(), Kind::Untyped, name))
}

/// `name{labels} value [timestamp] [# exemplar]` → (name, labels, value).
fn sample_line(line: &str) -> Result<(&str, Labels, String), String> {
    let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inner)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = number(value).ok_or_else(|| format!("bad value {value:?}"))?;
    match fields.next() {
        None => {}
        Some("#") => {} // an OpenMetrics exemplar: dropped
        Some(ts) if ts.parse::<f64>().is_ok() => match fields.next() {
            None | Some("#") => {}
            Some(x) => return Err(format!("unexpected {x:?} after the timestamp")),
        },
        Some(x) => return Err(format!("unexpected {x:?} after the value")),
    }
    Ok((name, labels, value))
}

/// The label pairs of `a="x",b="y"}…` (after the `{`), escapes kept as written, and what follows
/// the `}`.
fn label_set(mut s: &str) -> Result<(Labels, &str), String> {
    let mut out: Labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((out, after));
        }
        let eq = s.find('=').ok_or("a label without a value")?;
        let name = s[..eq].trim();
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name} twice"));
        }
        let rest = s[eq + 1..].trim_start();
        let body = rest.strip_prefix('"').ok_or_else(|| format!("the value of label {name} is not quoted"))?;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in body.char_indices() {
            if escaped {
                if !matches!(c, '\\' | '"' | 'n') {
                    return Err(format!("invalid escape \\{c} in label {name}"));
                }
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                close = Some(i);
                break;
            }
        }
        let close = close.ok_or_else(|| format!("the value of label {name} is not closed"))?;
        out.push((name.to_string(), body[..close].to_string()));
        s = body[close + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if s.is_empty() {
            return Err("the label set is not closed".into());
        } else if !s.starts_with('}') {
            return Err("labels not separated by a comma".into());
        }
    }
}

/// A sample value as the text format writes it, or None when it is not a number.
fn number(s: &str) -> Option<String> {
    let v: f64 = s.parse().ok()?;
    Some(if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if s.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) {
        s.to_string()
    } else {
        format!("{v:e}")
    })
}

/// `# HELP` text: the text format escapes `\\` and `\n`; OpenMetrics `\"` too.
fn unescape_help(s: &str, openmetrics: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if openmetrics => out.push('"'),
            // The text format's own parser keeps an unknown escape as written.
            Some(x) if !openmetrics => {
                out.push('\\');
                out.push(x);
            }
            Some(x) => return Err(format!("invalid escape \\{x} in # HELP")),
            None => out.push('\\'),
        }
    }
    Ok(out)
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Labels a worker's series get, first; a label of the worker's own with one of these names is
/// kept as `exported_NAME`, as Prometheus does for a target's labels (`honor_labels: false`).
pub struct Origin {
    pub slot: usize,
    pub generation: u64,
}

/// The pool's exposition under construction: corral's own families, then the workers'.
#[derive(Default)]
pub struct Merged {
    families: Families,
    /// Families nobody else may add to (corral's own).
    reserved: HashSet<String>,
}

/// A family of a worker's that could not be merged, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub family: String,
    pub why: String,
}

impl Merged {
    /// corral's own families: no worker may add to them.
    pub fn own(&mut self, families: Families) {
        for (name, mut f) in families {
            // In label order (the encoder keeps them in a hash map): slot 0 before slot 1.
            f.samples.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
            self.reserved.insert(name.clone());
            self.families.insert(name, f);
        }
    }

    /// Add a worker's families with its `slot` and `generation`; families that clash with what
    /// is there (corral's own, or another type under the same name) are left out and returned.
    pub fn add(&mut self, families: Families, origin: &Origin) -> Vec<Conflict> {
        let mut conflicts = Vec::new();
        let (slot, generation) = (origin.slot.to_string(), origin.generation.to_string());
        for (name, mut f) in families {
            if self.reserved.contains(&name) {
                conflicts.push(Conflict { family: name, why: "corral's own metric has that name".into() });
                continue;
            }
            for s in &mut f.samples {
                for (label, _) in &mut s.labels {
                    if label == "slot" || label == "generation" {
                        *label = format!("exported_{label}");
                    }
                }
                s.labels.insert(0, ("generation".into(), generation.clone()));
                s.labels.insert(0, ("slot".into(), slot.clone()));
            }
            match self.families.get_mut(&name) {
                None => {
                    self.families.insert(name, f);
                }
                Some(have) if have.kind != f.kind => conflicts.push(Conflict {
                    family: name,
                    why: format!("it is a {} here and a {} in another worker", f.kind.as_str(), have.kind.as_str()),
                }),
                Some(have) => {
                    if have.help.is_none() {
                        have.help = f.help;
                    }
                    have.samples.extend(f.samples);
                }
            }
        }
        conflicts
    }

    /// The text exposition: corral's families first, then the others, by name.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let own = self.families.iter().filter(|(n, _)| self.reserved.contains(*n));
        let others = self.families.iter().filter(|(n, _)| !self.reserved.contains(*n));
        for (name, f) in own.chain(others) {
            if let Some(h) = &f.help {
                let _ = writeln!(out, "# HELP {name} {}", escape_help(h));
            }
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.as_str());
            for s in &f.samples {
                out.push_str(&s.name);
                if !s.labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in s.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{v}\"");
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", s.value);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(workers: &[(usize, u64, &str, bool)]) -> (String, Vec<Conflict>) {
        let mut m = Merged::default();
        let mut all = Vec::new();
        for (slot, generation, text, om) in workers {
            let f = parse(text, *om).unwrap();
            all.extend(m.add(f, &Origin { slot: *slot, generation: *generation }));
        }
        (m.render(), all)
    }

    #[test]
    fn families_of_two_workers_merge_with_one_help_and_type() {
        let w = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
                 http_requests_total{code=\"200\"} 3\nhttp_requests_total{code=\"500\"} 1\n";
        let (text, conflicts) = merged(&[(0, 1, w, false), (1, 1, w, false)]);
        assert!(conflicts.is_empty());
        assert_eq!(
            text,
            "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
             http_requests_total{slot=\"0\",generation=\"1\",code=\"200\"} 3\n\
             http_requests_total{slot=\"0\",generation=\"1\",code=\"500\"} 1\n\
             http_requests_total{slot=\"1\",generation=\"1\",code=\"200\"} 3\n\
             http_requests_total{slot=\"1\",generation=\"1\",code=\"500\"} 1\n"
        );
    }

    #[test]
    fn openmetrics_families_become_text_format_families() {
        let om = "# TYPE req counter\n# HELP req Requests \\\"served\\\".\n# UNIT req requests\nreq_total 5 # {trace=\"a\"} 1\nreq_created 1.7e9\n\
                  # TYPE lat histogram\nlat_bucket{le=\"0.1\"} 1\nlat_bucket{le=\"+Inf\"} 2\nlat_sum 0.3\nlat_count 2\nlat_created 1.7e9\n\
                  # TYPE build info\nbuild_info{version=\"1.2\"} 1\n\
                  # TYPE mode stateset\nmode{mode=\"a\"} 1\nmode{mode=\"b\"} 0\n\
                  # EOF\nignored 1\n";
        let (text, conflicts) = merged(&[(2, 7, om, true)]);
        assert!(conflicts.is_empty());
        assert_eq!(
            text,
            "# TYPE build_info gauge\nbuild_info{slot=\"2\",generation=\"7\",version=\"1.2\"} 1\n\
             # TYPE lat histogram\nlat_bucket{slot=\"2\",generation=\"7\",le=\"0.1\"} 1\n\
             lat_bucket{slot=\"2\",generation=\"7\",le=\"+Inf\"} 2\nlat_sum{slot=\"2\",generation=\"7\"} 0.3\n\
             lat_count{slot=\"2\",generation=\"7\"} 2\n\
             # TYPE mode gauge\nmode{slot=\"2\",generation=\"7\",mode=\"a\"} 1\nmode{slot=\"2\",generation=\"7\",mode=\"b\"} 0\n\
             # HELP req_total Requests \"served\".\n# TYPE req_total counter\nreq_total{slot=\"2\",generation=\"7\"} 5\n"
        );
    }

    #[test]
    fn text_format_details_survive() {
        let t = "# TYPE rpc summary\nrpc{quantile=\"0.5\"} 0.01\nrpc_sum 1.5\nrpc_count 100\n\
                 # HELP odd A help with a \\\\ and a \\n.\n# TYPE odd gauge\nodd{path=\"a\\\"b\\\\c\\n\"} NaN 1700000000000\n\
                 untyped_thing -Inf\nlonely_total 4\n";
        let (text, _) = merged(&[(0, 1, t, false)]);
        assert!(text.contains("# TYPE rpc summary\nrpc{slot=\"0\",generation=\"1\",quantile=\"0.5\"} 0.01\nrpc_sum{"));
        assert!(text.contains("# HELP odd A help with a \\\\ and a \\n.\n"), "{text}");
        assert!(text.contains("odd{slot=\"0\",generation=\"1\",path=\"a\\\"b\\\\c\\n\"} NaN\n"), "{text}");
        assert!(text.contains("# TYPE untyped_thing untyped\nuntyped_thing{slot=\"0\",generation=\"1\"} -Inf\n"));
        assert!(text.contains("# TYPE lonely_total untyped\n"));
    }

    #[test]
    fn worker_labels_named_like_corrals_are_kept_as_exported() {
        let (text, _) = merged(&[(3, 2, "x{slot=\"mine\",generation=\"g\"} 1\n", false)]);
        assert!(text.contains("x{slot=\"3\",generation=\"2\",exported_slot=\"mine\",exported_generation=\"g\"} 1"));
    }

    #[test]
    fn clashes_leave_the_later_family_out() {
        let mut m = Merged::default();
        m.own(parse("# TYPE corral_up gauge\ncorral_up 1\n", false).unwrap());
        let c = m.add(parse("corral_up 0\n# TYPE t gauge\nt 1\n", false).unwrap(), &Origin { slot: 0, generation: 1 });
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].family, "corral_up");
        let c = m.add(parse("# TYPE t counter\nt 1\n", false).unwrap(), &Origin { slot: 1, generation: 1 });
        assert_eq!(c[0].family, "t");
        assert_eq!(
            m.render(),
            "# TYPE corral_up gauge\ncorral_up 1\n# TYPE t gauge\nt{slot=\"0\",generation=\"1\"} 1\n"
        );
    }

    #[test]
    fn garbage_is_refused_with_its_line() {
        for (text, line, what) in [
            ("ok 1\n{x=\"1\"} 2\n", 2, "bad metric name"),
            ("a{b=1} 2\n", 1, "not quoted"),
            ("a{b=\"1\"", 1, "not closed"),
            ("a{b=\"\\t\"} 1\n", 1, "invalid escape"),
            ("a{b=\"1\",b=\"2\"} 1\n", 1, "twice"),
            ("a one\n", 1, "bad value"),
            ("a\n", 1, "no value"),
            ("a 1 2 3\n", 1, "unexpected"),
            ("# TYPE a sometimes\n", 1, "unknown type"),
            ("# TYPE a gauge\n# TYPE a counter\n", 2, "declared twice"),
            ("\u{0}\u{1}binary", 1, "bad metric name"),
        ] {
            let e = parse(text, false).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.what.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_same_series_twice_counts_once() {
        let f = parse("a{x=\"1\"} 1\na{x=\"1\"} 2\n", false).unwrap();
        assert_eq!(f["a"].samples.len(), 1);
        assert_eq!(f["a"].samples[0].value, "1");
    }
}
