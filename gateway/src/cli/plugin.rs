//! `palisade plugin`: the plugin author's kit. `new` scaffolds a Rust plugin crate, `check`
//! loads a component the way the gateway does (compile, link against the `palisade:policy/plugin`
//! world with the same capability-free host, run `init` with a config) and lists its hooks and
//! imports, and `test` runs its hooks on a fixture call and prints the verdicts. `check` and
//! `test` reuse the gateway's plugin host (`crate::plugins`), so a plugin that passes here loads
//! in the gateway, in any language; no running gateway is needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::CliError;
use crate::core::settings::{Instances, OnError, PluginSettings};
use crate::plugins::HostServices;
use crate::plugins::bindings::{
    Agent, Call, CallKind, Completion, Hooks, Outcome, Tool, Usage, Verdict,
};
use crate::plugins::engine::{EngineLimits, PluginEngine};
use crate::plugins::host::CallHolds;
use crate::plugins::instance::Instance;
use crate::plugins::loaded::{self, LoadedPlugin};

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Scaffold a Rust plugin crate (SDK, hooks, native tests) in a new folder NAME.
    New {
        /// The plugin's name (letters, digits, `-`); also the folder created.
        name: String,
        /// The folder to create (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The `plugin-sdk` folder of a Palisade checkout (default: found from the current
        /// folder upwards, or the one this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Load a plugin as the gateway would: validate its world, run `init`, list its hooks.
    Check {
        /// The Wasm component.
        file: PathBuf,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Run a plugin's hooks on a fixture call and print the verdicts.
    Test {
        /// The Wasm component.
        file: PathBuf,
        /// The fixture: a JSON file with `call` and optionally `response`, `stream`, `tools`,
        /// `usage`, `status` (see docs/plugins.md).
        #[arg(long)]
        call: PathBuf,
        /// Fail (exit 1) unless `on-request` gives this verdict: allow, deny, rewrite, hold,
        /// route.
        #[arg(long)]
        expect: Option<String>,
        /// Print the verdicts as one JSON document.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        load: LoadArgs,
    },
}

/// How to load the plugin: its config and limits, as `[[plugins]]` would set them.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The plugin's config as JSON (what `[plugins.config]` would hold), or `@FILE` to read it.
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// Memory cap of an instance in MiB (`memory_mb`).
    #[arg(long, default_value_t = 128)]
    pub memory_mb: usize,
    /// Deadline of one hook in milliseconds (`deadline_ms`).
    #[arg(long, default_value_t = 2000)]
    pub deadline_ms: u64,
    /// Where compiled components are cached (by SHA-256), as the gateway's
    /// `plugin_host.cache_dir`.
    #[arg(long, default_value = ".palisade/cache")]
    pub cache_dir: PathBuf,
}

pub async fn run(command: PluginCommand) -> Result<(), CliError> {
    match command {
        PluginCommand::New { name, dir, sdk } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = match sdk {
                Some(s) => s,
                None => find_sdk()?,
            };
            scaffold(&name, &dir, &sdk)?;
            println!("created plugin '{name}' in {}", dir.display());
            println!("  native tests:  cd {} && cargo test", dir.display());
            println!(
                "  build:         cargo build --target wasm32-wasip2 --release   (the .wasm is under target/wasm32-wasip2/release/)"
            );
            println!(
                "  try it:        palisade plugin check FILE.wasm --config '{{\"blocked_models\": [\"gpt-4o\"]}}'"
            );
            Ok(())
        }
        PluginCommand::Check { file, load } => check(&file, &load).await,
        PluginCommand::Test {
            file,
            call,
            expect,
            json,
            load,
        } => test(&file, &call, expect.as_deref(), json, &load).await,
    }
}

/// A plugin loaded by the gateway's own code, and what it took.
struct Loaded {
    _engine: PluginEngine,
    plugin: LoadedPlugin,
    compile_time: Duration,
    load_check_time: Duration,
    imports: Vec<String>,
    bytes: usize,
}

fn config_json(arg: &str) -> Result<String, CliError> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::Invalid(format!("cannot read config file {path}: {e}")))?,
        None => arg.to_string(),
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Invalid(format!("--config is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(CliError::Invalid(
            "--config must be a JSON object, as a [plugins.config] table is".into(),
        ));
    }
    Ok(value.to_string())
}

async fn load(file: &Path, args: &LoadArgs) -> Result<Loaded, CliError> {
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let settings = PluginSettings {
        name: name.clone(),
        path: file.to_path_buf(),
        on_error: OnError::Deny,
        instances: Some(Instances::Fresh),
        max_calls: 1,
        deadline: Duration::from_millis(args.deadline_ms),
        memory_bytes: args.memory_mb << 20,
        config_json: config_json(&args.config)?,
    };
    let engine = PluginEngine::new(EngineLimits {
        max_memory_bytes: settings.memory_bytes,
        max_instances: 16,
    })
    .map_err(|e| CliError::Invalid(e.to_string()))?;
    let fail = |e: loaded::LoadError| CliError::Invalid(e.to_string());
    let (bytes, sha256) = loaded::read_plugin(&name, file).map_err(fail)?;
    let size = bytes.len();
    let started = Instant::now();
    let (e, l, cache, s) = (
        engine.engine.clone(),
        engine.linker.clone(),
        args.cache_dir.clone(),
        settings.clone(),
    );
    let compiled =
        tokio::task::spawn_blocking(move || loaded::compile(&e, &l, &cache, &s, &bytes, sha256))
            .await
            .map_err(|e| CliError::Invalid(format!("compile task failed: {e}")))?
            .map_err(fail)?;
    let compile_time = started.elapsed();
    let imports = compiled
        .component
        .component_type()
        .imports(&engine.engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let started = Instant::now();
    let plugin = LoadedPlugin::new(
        settings,
        compiled,
        Arc::new(HostServices::default()),
        Arc::new(Semaphore::new(16)),
    )
    .await
    .map_err(fail)?;
    Ok(Loaded {
        _engine: engine,
        plugin,
        compile_time,
        load_check_time: started.elapsed(),
        imports,
        bytes: size,
    })
}

/// The names of the hooks in a set, as the WIT spells them.
pub fn hook_names(hooks: Hooks) -> Vec<&'static str> {
    [
        (Hooks::ON_REQUEST, "on-request"),
        (Hooks::ON_RESPONSE, "on-response"),
        (Hooks::ON_TEXT, "on-text"),
        (Hooks::ON_COMPLETE, "on-complete"),
        (Hooks::FILTER_TOOLS, "filter-tools"),
    ]
    .into_iter()
    .filter(|(h, _)| hooks.contains(*h))
    .map(|(_, n)| n)
    .collect()
}

async fn check(file: &Path, args: &LoadArgs) -> Result<(), CliError> {
    let l = load(file, args).await?;
    println!("ok: {} fits palisade:policy/plugin", file.display());
    println!("  sha256:   {}", l.plugin.sha256);
    println!("  size:     {:.1} MiB", l.bytes as f64 / (1 << 20) as f64);
    println!(
        "  compile:  {} ms (cached by SHA-256 in {})",
        l.compile_time.as_millis(),
        args.cache_dir.display()
    );
    println!(
        "  init:     ok in {} ms (instantiate + init)",
        l.load_check_time.as_millis()
    );
    println!("  hooks:    {}", hook_names(l.plugin.hooks).join(", "));
    println!("  kinds:    {}", l.plugin.kinds.names().join(", "));
    println!(
        "  pooling:  {}",
        if l.plugin.declared_stateless {
            "declared stateless: pooled unless configured `instances = \"fresh\"`"
        } else {
            "fresh per call unless configured `instances = \"pooled\"`"
        }
    );
    println!("  imports:  {}", l.imports.join(", "));
    if l.imports.iter().any(|i| i.starts_with("wasi:")) {
        println!(
            "            (WASI is satisfied by a context with no files, env, args, sockets or stdio)"
        );
    }
    Ok(())
}

/// A fixture for `plugin test`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    call: FixtureCall,
    /// For `on-response`: the full answer (a JSON value or a string).
    response: Option<Value>,
    /// For `on-text`: the streamed deltas, in order.
    stream: Option<Vec<String>>,
    /// For `filter-tools`.
    tools: Option<Vec<FixtureTool>>,
    usage: Option<FixtureUsage>,
    /// HTTP status for `on-complete` when the call was not stopped (default 200).
    status: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureCall {
    /// `llm-call`, `tool-call` or `tool-list`.
    kind: String,
    #[serde(default)]
    target: String,
    /// The OpenAI request or the tool arguments: a JSON value (canonicalised) or a string.
    #[serde(default)]
    body: Value,
    #[serde(default)]
    agent: FixtureAgent,
    #[serde(default)]
    chain: Vec<String>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    max_output_tokens: u32,
    #[serde(default)]
    max_cost: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureAgent {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    team: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

impl Default for FixtureAgent {
    fn default() -> Self {
        FixtureAgent {
            id: "test-agent".into(),
            name: None,
            owner: String::new(),
            team: String::new(),
            labels: Default::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureTool {
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FixtureUsage {
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
    #[serde(default)]
    cached_tokens: u32,
    #[serde(default)]
    cost: u64,
    #[serde(default)]
    served_by: String,
}

fn body_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn to_call(f: FixtureCall) -> Result<Call, CliError> {
    let kind = match f.kind.as_str() {
        "llm-call" => CallKind::LlmCall,
        "tool-call" => CallKind::ToolCall,
        "tool-list" => CallKind::ToolList,
        other => {
            return Err(CliError::Invalid(format!(
                "fixture call.kind '{other}' is not one of llm-call, tool-call, tool-list"
            )));
        }
    };
    let mut chain = f.chain;
    if chain.is_empty() {
        chain.push(f.agent.id.clone());
    }
    Ok(Call {
        request_id: f.request_id.unwrap_or_else(|| "req-plugin-test".into()),
        run_id: f.run_id.unwrap_or_else(|| "run-plugin-test".into()),
        chain,
        agent: Agent {
            name: f.agent.name.unwrap_or_else(|| f.agent.id.clone()),
            id: f.agent.id,
            owner: f.agent.owner,
            team: f.agent.team,
            labels: f.agent.labels.into_iter().collect(),
        },
        kind,
        target: f.target,
        body: body_text(&f.body),
        stream: f.stream,
        input_tokens: f.input_tokens,
        max_output_tokens: f.max_output_tokens,
        max_cost: f.max_cost,
    })
}

/// A verdict as JSON: `{"verdict": "deny", "status": 403, ...}`.
pub fn outcome_json(o: &Outcome) -> Value {
    let mut v = match &o.verdict {
        Verdict::Allow => json!({"verdict": "allow"}),
        Verdict::Deny(d) => {
            json!({"verdict": "deny", "status": d.status, "code": d.code, "message": d.message})
        }
        Verdict::Rewrite(body) => json!({"verdict": "rewrite", "body": body}),
        Verdict::Hold(h) => json!({
            "verdict": "hold", "rule": h.rule, "approvals": h.approvals, "group": h.group,
            "ttl_secs": h.ttl_secs, "summary": h.summary,
        }),
        Verdict::Route(targets) => json!({"verdict": "route", "targets": targets}),
    };
    if !o.annotations.is_empty() {
        v["annotations"] = o
            .annotations
            .iter()
            .map(|(k, val)| json!([k, val]))
            .collect();
    }
    v
}

fn verdict_line(o: &Value) -> String {
    let mut line = o["verdict"].as_str().unwrap_or("?").to_string();
    match line.as_str() {
        "deny" => line.push_str(&format!(
            " {} {}: {}",
            o["status"],
            o["code"].as_str().unwrap_or(""),
            o["message"].as_str().unwrap_or("")
        )),
        "hold" => line.push_str(&format!(
            " rule={} group={} approvals={} ttl={}s: {}",
            o["rule"].as_str().unwrap_or(""),
            o["group"].as_str().unwrap_or(""),
            o["approvals"],
            o["ttl_secs"],
            o["summary"].as_str().unwrap_or("")
        )),
        "rewrite" => line.push_str(&format!(" {}", o["body"].as_str().unwrap_or(""))),
        "route" => line.push_str(&format!(" {}", o["targets"])),
        _ => {}
    }
    if let Some(notes) = o["annotations"].as_array() {
        for n in notes {
            line.push_str(&format!(
                "\n      note {} = {}",
                n[0].as_str().unwrap_or(""),
                n[1].as_str().unwrap_or("")
            ));
        }
    }
    line
}

async fn test(
    file: &Path,
    fixture: &Path,
    expect: Option<&str>,
    as_json: bool,
    args: &LoadArgs,
) -> Result<(), CliError> {
    let text = std::fs::read_to_string(fixture).map_err(|e| {
        CliError::Invalid(format!("cannot read fixture {}: {e}", fixture.display()))
    })?;
    let fixture: Fixture = serde_json::from_str(&text)
        .map_err(|e| CliError::Invalid(format!("fixture {}: {e}", fixture.display())))?;
    let l = load(file, args).await?;
    let plugin = &l.plugin;
    let call = to_call(fixture.call)?;
    let hooks = plugin.hooks;
    let fault = |hook: &str, e: crate::core::error::PluginFault| {
        CliError::Invalid(format!("{hook} failed ({}): {e}", e.code()))
    };
    let request_id: Arc<str> = Arc::from(call.request_id.as_str());
    let mut inst: Instance = plugin
        .checkout(&request_id, &Arc::new(CallHolds::default()))
        .await
        .map_err(|e| fault("instantiate", e))?;
    let mut report = Vec::new();
    let mut stopped = None;
    let mut request_verdict = "allow".to_string();

    if hooks.contains(Hooks::ON_REQUEST) {
        let started = Instant::now();
        let o = inst
            .on_request(&call)
            .await
            .map_err(|e| fault("on-request", e))?;
        let v = outcome_json(&o);
        request_verdict = v["verdict"].as_str().unwrap_or("").to_string();
        if let Verdict::Deny(d) = &o.verdict {
            stopped = Some(d.status);
        } else if matches!(o.verdict, Verdict::Hold(_)) {
            stopped = Some(202);
        }
        report.push(json!({"hook": "on-request", "outcome": v, "micros": started.elapsed().as_micros() as u64}));
    }
    if stopped.is_none() {
        if let (true, Some(tools)) = (hooks.contains(Hooks::FILTER_TOOLS), &fixture.tools) {
            let tools: Vec<Tool> = tools
                .iter()
                .map(|t| Tool {
                    name: t.name.clone(),
                    description: t.description.clone(),
                })
                .collect();
            let kept = inst
                .filter_tools(&call, &tools)
                .await
                .map_err(|e| fault("filter-tools", e))?;
            report.push(json!({"hook": "filter-tools", "visible": kept}));
        }
        if let (true, Some(resp)) = (hooks.contains(Hooks::ON_RESPONSE), &fixture.response) {
            let o = inst
                .on_response(&call, &body_text(resp))
                .await
                .map_err(|e| fault("on-response", e))?;
            if let Verdict::Deny(d) = &o.verdict {
                stopped = Some(d.status);
            }
            report.push(json!({"hook": "on-response", "outcome": outcome_json(&o)}));
        }
        if let (true, Some(deltas)) = (hooks.contains(Hooks::ON_TEXT), &fixture.stream) {
            let mut out = Vec::new();
            for d in deltas {
                out.push(
                    inst.on_text(&call, d, false)
                        .await
                        .map_err(|e| fault("on-text", e))?,
                );
            }
            out.push(
                inst.on_text(&call, "", true)
                    .await
                    .map_err(|e| fault("on-text", e))?,
            );
            report.push(json!({"hook": "on-text", "deltas": out, "text": out.concat()}));
        }
    }
    if hooks.contains(Hooks::ON_COMPLETE) {
        let u = fixture.usage.unwrap_or_default();
        let usage = Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cached_tokens: u.cached_tokens,
            cost: u.cost,
            served_by: u.served_by,
        };
        let status = Completion {
            status: stopped.or(fixture.status).unwrap_or(200),
            error_code: None,
            truncated: false,
        };
        inst.on_complete(&call, &usage, &status)
            .await
            .map_err(|e| fault("on-complete", e))?;
        report.push(json!({"hook": "on-complete", "status": status.status}));
    }
    plugin.checkin(inst);

    if as_json {
        let doc = json!({
            "plugin": file.display().to_string(),
            "hooks": hook_names(hooks),
            "results": report,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
        );
    } else {
        println!("{}: hooks {}", file.display(), hook_names(hooks).join(", "));
        for r in &report {
            let hook = r["hook"].as_str().unwrap_or("");
            let what = match hook {
                "on-request" | "on-response" => verdict_line(&r["outcome"]),
                "filter-tools" => format!("visible {}", r["visible"]),
                "on-text" => format!("text {}", r["text"]),
                _ => format!("ran (status {})", r["status"]),
            };
            println!("  {hook:<13} {what}");
        }
    }
    if let Some(want) = expect.filter(|w| *w != request_verdict) {
        return Err(CliError::Invalid(format!(
            "expected on-request to {want}, it said {request_verdict}"
        )));
    }
    Ok(())
}

fn find_sdk() -> Result<PathBuf, CliError> {
    let is_sdk = |p: &Path| p.join("Cargo.toml").exists() && p.join("src/lib.rs").exists();
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let sdk = dir.join("plugin-sdk");
            if is_sdk(&sdk) {
                return Ok(sdk);
            }
        }
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk");
    if is_sdk(&built) {
        return Ok(built);
    }
    Err(CliError::Invalid(
        "cannot find the Palisade plugin SDK: pass --sdk PATH/TO/palisade/plugin-sdk".into(),
    ))
}

const TEMPLATE_CARGO: &str = include_str!("plugin_template/Cargo.toml.tmpl");
const TEMPLATE_LIB: &str = include_str!("plugin_template/lib.rs.tmpl");
const TEMPLATE_CONFIG: &str = include_str!("plugin_template/config.toml.tmpl");
const TEMPLATE_FIXTURE: &str = include_str!("plugin_template/fixture.json.tmpl");

/// Write a new plugin crate into `dir` from the templates.
pub fn scaffold(name: &str, dir: &Path, sdk: &Path) -> Result<(), CliError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(CliError::Invalid(format!(
            "plugin name '{name}': use lowercase letters, digits and '-', starting with a letter"
        )));
    }
    if dir.exists()
        && dir
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(CliError::Invalid(format!(
            "{} already exists and is not empty",
            dir.display()
        )));
    }
    let sdk = std::fs::canonicalize(sdk)
        .map_err(|e| CliError::Invalid(format!("SDK folder {}: {e}", sdk.display())))?;
    let type_name: String = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{Type}}", &type_name)
            .replace("{{sdk}}", &sdk.display().to_string().replace('\\', "/"))
    };
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    std::fs::write(dir.join("Cargo.toml"), fill(TEMPLATE_CARGO))?;
    std::fs::write(dir.join("src/lib.rs"), fill(TEMPLATE_LIB))?;
    std::fs::write(dir.join(".cargo/config.toml"), fill(TEMPLATE_CONFIG))?;
    std::fs::write(dir.join("fixture.json"), fill(TEMPLATE_FIXTURE))?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    Ok(())
}
