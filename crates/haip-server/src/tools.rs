//! Tools the agent side offers (contract section 10): the [`Tool`] trait, the registry that
//! validates parameters against each tool's JSON Schema, and the built-ins `echo`, `add`
//! and `sleep`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use haip_protocol::payload::{RunStatus, ToolInfo, ToolList, ToolSchema};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

/// Which tools exist, for TOOL_LIST, TOOL_SCHEMA and TOOL_CALL routing.
pub trait ToolCatalog: Send + Sync {
    fn list(&self) -> ToolList;
    fn schema(&self, tool: &str) -> Option<ToolSchema>;
    fn has(&self, tool: &str) -> bool;
}

/// A tool as an agent offers it to a model: name, description and input schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// How a tool call ended, as its TOOL_DONE told the client: `result` is the tool's result
/// (OK), `{code, message}` (ERROR), or absent (CANCELLED).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    pub status: RunStatus,
    pub result: Option<Value>,
}

impl ToolOutcome {
    pub fn error(code: &str, message: impl Into<String>) -> ToolOutcome {
        ToolOutcome {
            status: RunStatus::Error,
            result: Some(json!({"code": code, "message": message.into()})),
        }
    }

    pub fn cancelled() -> ToolOutcome {
        ToolOutcome {
            status: RunStatus::Cancelled,
            result: None,
        }
    }
}

/// A tool failed; the message reaches the client in TOOL_DONE {status: ERROR}.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

pub type ToolFuture = Pin<Box<dyn Future<Output = Result<Value, ToolError>> + Send + 'static>>;

/// What a running tool can do besides returning: report progress, notice cancellation.
pub struct ToolContext {
    cancel: CancellationToken,
    progress: Box<dyn Fn(f64) + Send + Sync>,
}

impl ToolContext {
    pub fn new(cancel: CancellationToken, progress: Box<dyn Fn(f64) + Send + Sync>) -> Self {
        ToolContext { cancel, progress }
    }

    /// Sends TOOL_UPDATE {RUNNING, progress} (0..100).
    pub fn progress(&self, percent: f64) {
        (self.progress)(percent)
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the call is cancelled (TOOL_CANCEL, or RUN_CANCEL of its run).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }
}

/// A tool the client can call with TOOL_CALL.
pub trait Tool: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn description(&self) -> &str;
    /// JSON Schema of `params`; calls are validated against it before `call` runs.
    fn input_schema(&self) -> Value;
    fn output_schema(&self) -> Value;
    fn call(&self, params: Map<String, Value>, ctx: ToolContext) -> ToolFuture;
}

struct Registered {
    tool: Arc<dyn Tool>,
    validator: jsonschema::Validator,
}

/// The tools of a server, in registration order.
#[derive(Default)]
pub struct ToolRegistry {
    tools: Vec<Registered>,
}

impl ToolRegistry {
    pub fn new() -> ToolRegistry {
        ToolRegistry::default()
    }

    /// `echo`, `add` and `sleep`.
    pub fn with_builtins() -> ToolRegistry {
        let mut r = ToolRegistry::new();
        for tool in [
            Arc::new(EchoTool) as Arc<dyn Tool>,
            Arc::new(AddTool),
            Arc::new(SleepTool),
        ] {
            // The built-in schemas are constants known to compile.
            let _ = r.register(tool);
        }
        r
    }

    /// Adds a tool; fails if its input schema is not a valid JSON Schema.
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> Result<(), String> {
        let validator = jsonschema::validator_for(&tool.input_schema())
            .map_err(|e| format!("tool {}: invalid input schema: {e}", tool.name()))?;
        self.tools.retain(|t| t.tool.name() != tool.name());
        self.tools.push(Registered { tool, validator });
        Ok(())
    }

    /// Every tool with its input schema, in registration order.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools
            .iter()
            .map(|t| ToolSpec {
                name: t.tool.name().to_string(),
                description: t.tool.description().to_string(),
                input_schema: t.tool.input_schema(),
            })
            .collect()
    }

    fn find(&self, name: &str) -> Option<&Registered> {
        self.tools.iter().find(|t| t.tool.name() == name)
    }

    /// Validates `params` and runs the tool.
    pub async fn call(
        &self,
        name: &str,
        params: Map<String, Value>,
        ctx: ToolContext,
    ) -> Result<Value, ToolError> {
        let Some(reg) = self.find(name) else {
            return Err(ToolError(format!("no tool named {name:?}")));
        };
        let instance = Value::Object(params);
        if let Err(e) = reg.validator.validate(&instance) {
            return Err(ToolError(format!("invalid params: {e}")));
        }
        let Value::Object(params) = instance else {
            return Err(ToolError("params must be an object".into()));
        };
        reg.tool.call(params, ctx).await
    }
}

impl ToolCatalog for ToolRegistry {
    fn list(&self) -> ToolList {
        ToolList {
            tools: self
                .tools
                .iter()
                .map(|t| ToolInfo {
                    name: t.tool.name().to_string(),
                    description: Some(t.tool.description().to_string()),
                    extra: Map::new(),
                })
                .collect(),
            extra: Map::new(),
        }
    }

    fn schema(&self, tool: &str) -> Option<ToolSchema> {
        let t = &self.find(tool)?.tool;
        let input = t.input_schema();
        let schema = match &input {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        Some(ToolSchema {
            tool: tool.to_string(),
            schema,
            input_schema: Some(input),
            output_schema: Some(t.output_schema()),
            extra: Map::new(),
        })
    }

    fn has(&self, tool: &str) -> bool {
        self.find(tool).is_some()
    }
}

/// `echo` {message: string} -> {echoed}
pub struct EchoTool;

impl Tool for EchoTool {
    fn name(&self) -> &str {
        "echo"
    }
    fn description(&self) -> &str {
        "Returns the message it is given"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object", "properties": {"message": {"type": "string"}},
               "required": ["message"], "additionalProperties": false})
    }
    fn output_schema(&self) -> Value {
        json!({"type": "object", "properties": {"echoed": {"type": "string"}}, "required": ["echoed"]})
    }
    fn call(&self, params: Map<String, Value>, _ctx: ToolContext) -> ToolFuture {
        let message = params.get("message").cloned().unwrap_or(Value::Null);
        Box::pin(async move { Ok(json!({ "echoed": message })) })
    }
}

/// `add` {a: number, b: number} -> {result}
pub struct AddTool;

impl Tool for AddTool {
    fn name(&self) -> &str {
        "add"
    }
    fn description(&self) -> &str {
        "Adds two numbers"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
               "required": ["a", "b"], "additionalProperties": false})
    }
    fn output_schema(&self) -> Value {
        json!({"type": "object", "properties": {"result": {"type": "number"}}, "required": ["result"]})
    }
    fn call(&self, params: Map<String, Value>, _ctx: ToolContext) -> ToolFuture {
        let num = |k: &str| params.get(k).and_then(Value::as_f64);
        let result = match (params.get("a"), params.get("b")) {
            // Integers stay integers when their sum fits.
            (Some(Value::Number(a)), Some(Value::Number(b))) if a.is_i64() && b.is_i64() => a
                .as_i64()
                .zip(b.as_i64())
                .and_then(|(a, b)| a.checked_add(b))
                .map(Value::from),
            _ => None,
        }
        .or_else(|| Some(json!(num("a")? + num("b")?)));
        Box::pin(async move {
            result
                .map(|r| json!({ "result": r }))
                .ok_or_else(|| ToolError("a and b must be numbers".into()))
        })
    }
}

/// `sleep` {ms: integer <= 60000} -> {slept_ms}, reporting progress, cancellable.
pub struct SleepTool;

impl Tool for SleepTool {
    fn name(&self) -> &str {
        "sleep"
    }
    fn description(&self) -> &str {
        "Waits the given number of milliseconds, reporting progress; cancellable"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object",
               "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": 60000}},
               "required": ["ms"], "additionalProperties": false})
    }
    fn output_schema(&self) -> Value {
        json!({"type": "object", "properties": {"slept_ms": {"type": "integer"}}, "required": ["slept_ms"]})
    }
    fn call(&self, params: Map<String, Value>, ctx: ToolContext) -> ToolFuture {
        let ms = params.get("ms").and_then(Value::as_u64).unwrap_or(0);
        Box::pin(async move {
            // Ten progress steps, so a client sees the call advance and can cancel it.
            const STEPS: u64 = 10;
            let start = tokio::time::Instant::now();
            for step in 1..=STEPS {
                let until = start + Duration::from_millis(ms * step / STEPS);
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = ctx.cancelled() => {
                        return Err(ToolError("cancelled".into()));
                    }
                }
                if step < STEPS {
                    ctx.progress((step * 100 / STEPS) as f64);
                }
            }
            Ok(json!({ "slept_ms": ms }))
        })
    }
}
