//! Reading an ecosystem file as PM2 reads it: `.js`/`.cjs`/`.mjs` evaluated by `node` (it is a
//! program: `require`, `process.env`, computed values), `.json` and `.yaml`/`.yml` parsed; and
//! finding its apps in every shape PM2 accepts.

use std::path::Path;

use serde_json::{Map, Value};

use super::ImportError;

/// Read an ecosystem file into the JSON value PM2 would see.
pub fn read_ecosystem(path: &Path) -> Result<Value, ImportError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let text =
        || std::fs::read_to_string(path).map_err(|e| ImportError::Read { path: path.to_owned(), error: e.to_string() });
    let syntax = |format| move |error: String| ImportError::Syntax { path: path.to_owned(), format, error };
    match ext.as_str() {
        "json" => serde_json::from_str(&text()?).map_err(|e| syntax("JSON")(e.to_string())),
        "yaml" | "yml" => yaml_to_json(&text()?).map_err(syntax("YAML")),
        "js" | "cjs" | "mjs" => eval_with_node(path),
        _ => Err(ImportError::Extension(path.to_owned())),
    }
}

/// Evaluate a JavaScript ecosystem file with `node` and take its export as JSON.
fn eval_with_node(path: &Path) -> Result<Value, ImportError> {
    let abs =
        std::fs::canonicalize(path).map_err(|e| ImportError::Read { path: path.to_owned(), error: e.to_string() })?;
    // import() reads CommonJS and ES modules alike; functions and undefined drop out of JSON.
    let script = "import(require('url').pathToFileURL(process.argv[1]).href).then((m) => {\
                    let c = m.default !== undefined ? m.default : m;\
                    if (c && c['module.exports']) c = c['module.exports'];\
                    process.stdout.write(JSON.stringify(c));\
                  }).catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });";
    let out = std::process::Command::new("node")
        .args(["-e", script])
        .arg(&abs)
        .current_dir(abs.parent().unwrap_or(Path::new("/")))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("ecosystem.config.js");
                ImportError::NodeMissing { path: path.to_owned(), file: file.to_string() }
            } else {
                ImportError::Node(e.to_string())
            }
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
        return Err(ImportError::Evaluate { path: path.to_owned(), stderr });
    }
    serde_json::from_slice(&out.stdout).map_err(|e| ImportError::Export { path: path.to_owned(), error: e.to_string() })
}

fn yaml_to_json(text: &str) -> Result<Value, String> {
    use yaml_rust2::Yaml;
    fn conv(y: &Yaml) -> Value {
        match y {
            Yaml::Real(s) => {
                s.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
            }
            Yaml::Integer(i) => Value::from(*i),
            Yaml::String(s) => Value::from(s.clone()),
            Yaml::Boolean(b) => Value::from(*b),
            Yaml::Array(a) => Value::Array(a.iter().map(conv).collect()),
            Yaml::Hash(h) => Value::Object(
                h.iter()
                    .map(|(k, v)| {
                        let key = match k {
                            Yaml::String(s) => s.clone(),
                            Yaml::Integer(i) => i.to_string(),
                            Yaml::Boolean(b) => b.to_string(),
                            other => format!("{other:?}"),
                        };
                        (key, conv(v))
                    })
                    .collect(),
            ),
            Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
        }
    }
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    Ok(docs.first().map_or(Value::Null, conv))
}

/// The apps of an ecosystem: `{apps: [...]}`, `{apps: {...}}`, `[...]`, or one app object.
pub fn apps(eco: &Value) -> Result<Vec<Map<String, Value>>, ImportError> {
    let list = match eco {
        Value::Object(o) => match o.get("apps") {
            Some(Value::Array(a)) => a.clone(),
            Some(v @ Value::Object(_)) => vec![v.clone()],
            Some(_) => return Err(ImportError::Shape("`apps` must be a list of apps")),
            None if o.contains_key("script") => vec![eco.clone()],
            None => return Err(ImportError::Shape("no `apps` in the ecosystem file")),
        },
        Value::Array(a) => a.clone(),
        _ => return Err(ImportError::Shape("the ecosystem file must export an object with `apps`")),
    };
    list.into_iter()
        .enumerate()
        .map(|(i, a)| match a {
            Value::Object(o) => Ok(o),
            _ => Err(ImportError::NotAnApp(i + 1)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_in_every_shape() {
        let one = serde_json::json!({"script": "a.js"});
        assert_eq!(apps(&one).unwrap().len(), 1);
        assert_eq!(apps(&serde_json::json!({"apps": [{"script": "a"}, {"script": "b"}]})).unwrap().len(), 2);
        assert_eq!(apps(&serde_json::json!({"apps": {"script": "a"}})).unwrap().len(), 1);
        assert_eq!(apps(&serde_json::json!([{"script": "a"}])).unwrap().len(), 1);
        assert!(apps(&serde_json::json!({"deploy": {}})).unwrap_err().to_string().contains("no `apps`"));
        assert!(apps(&serde_json::json!({"apps": [1]})).unwrap_err().to_string().contains("not an object"));
        let y = yaml_to_json("apps:\n  - script: ./a.js\n    instances: 4\n    env:\n      PORT: 3001\n").unwrap();
        assert_eq!(y, serde_json::json!({"apps": [{"script": "./a.js", "instances": 4, "env": {"PORT": 3001}}]}));
    }
}
