//! One compiled data script in its own Lua state, and the sandbox it runs in.
//!
//! The state gets only Lua's base, `string`, `table`, `math` and `utf8` libraries,
//! without anything that reaches files, the process or the interpreter's insides
//! (`io`, `os`, `package`, `debug`, `coroutine`, `load`, `loadfile`, `dofile`,
//! `collectgarbage`, `string.dump`). `require("json")` returns the JSON module (the
//! only module there is, as in ThingsPanel) and `print` writes to the debug log.
//!
//! Limits, per call: an instruction budget and a wall-clock deadline, both checked by
//! a hook every [`HOOK_EVERY`] instructions, and a memory limit on the whole state.
//! Once a limit is hit it stays hit for the rest of the call: `pcall`/`xpcall` are
//! wrapped so a script cannot catch the limit's error and carry on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mlua::{
    Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Value, VmState, chunk::ChunkMode,
};
use tp_core::script::ScriptFailure;

/// How often (in Lua VM instructions) the hook checks the budget and the deadline.
pub(crate) const HOOK_EVERY: u32 = 1_000;

/// The limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptLimits {
    /// Lua VM instructions one call may run (checked every [`HOOK_EVERY`]).
    pub max_instructions: u64,
    /// Bytes the script's Lua state may hold in all.
    pub max_memory_bytes: usize,
    /// Wall-clock time one call may take.
    pub timeout: Duration,
    /// Largest output `encodeInp` may return.
    pub max_output_bytes: usize,
}

impl Default for ScriptLimits {
    /// 10 million instructions, 16 MiB, 250 ms, 1 MiB of output: far more than a
    /// decoder needs per message, little enough that a runaway script costs its
    /// device's ingest worker a fraction of a second.
    fn default() -> Self {
        Self {
            max_instructions: 10_000_000,
            max_memory_bytes: 16 * 1024 * 1024,
            timeout: Duration::from_millis(250),
            max_output_bytes: 1024 * 1024,
        }
    }
}

const TRIPPED_NONE: u8 = 0;
const TRIPPED_INSTRUCTIONS: u8 = 1;
const TRIPPED_TIMEOUT: u8 = 2;
const TRIPPED_MEMORY: u8 = 3;

/// What the hook and the `pcall` wrappers share during a call.
#[derive(Debug)]
struct Budget {
    epoch: Instant,
    /// Instructions left in this call (counted down by [`HOOK_EVERY`]).
    instructions_left: AtomicU64,
    /// Nanoseconds since `epoch` at which the call times out.
    deadline_ns: AtomicU64,
    /// Which limit was hit in this call ([`TRIPPED_NONE`] while none).
    tripped: AtomicU8,
}

impl Budget {
    fn start(&self, limits: &ScriptLimits) {
        self.instructions_left
            .store(limits.max_instructions, Ordering::Relaxed);
        let deadline = self.epoch.elapsed() + limits.timeout;
        self.deadline_ns
            .store(deadline.as_nanos() as u64, Ordering::Relaxed);
        self.tripped.store(TRIPPED_NONE, Ordering::Relaxed);
    }

    fn tripped(&self) -> u8 {
        self.tripped.load(Ordering::Relaxed)
    }

    fn trip(&self, what: u8) -> mlua::Error {
        // keep the first limit hit
        let _ =
            self.tripped
                .compare_exchange(TRIPPED_NONE, what, Ordering::Relaxed, Ordering::Relaxed);
        mlua::Error::runtime(LIMIT_MESSAGE)
    }

    /// The hook: one more slice of instructions ran.
    fn tick(&self) -> mlua::Result<VmState> {
        if self.tripped() != TRIPPED_NONE {
            return Err(mlua::Error::runtime(LIMIT_MESSAGE));
        }
        let left = self.instructions_left.load(Ordering::Relaxed);
        if left <= u64::from(HOOK_EVERY) {
            return Err(self.trip(TRIPPED_INSTRUCTIONS));
        }
        self.instructions_left
            .store(left - u64::from(HOOK_EVERY), Ordering::Relaxed);
        if self.epoch.elapsed().as_nanos() as u64 > self.deadline_ns.load(Ordering::Relaxed) {
            return Err(self.trip(TRIPPED_TIMEOUT));
        }
        Ok(VmState::Continue)
    }
}

const LIMIT_MESSAGE: &str = "data script limit exceeded";

/// A script compiled in its own sandboxed Lua state, ready to run `encodeInp`.
#[derive(Debug)]
pub struct CompiledScript {
    lua: Lua,
    entry: Function,
    budget: Arc<Budget>,
    limits: ScriptLimits,
}

impl CompiledScript {
    /// Compiles `source` (Lua text, never bytecode) and runs its top level under the
    /// limits, which must define the global function `encodeInp`.
    ///
    /// # Errors
    /// [`ScriptFailure::Compile`] for a syntax error or a missing `encodeInp`; a limit
    /// or runtime failure of the top level.
    pub fn compile(name: &str, source: &str, limits: ScriptLimits) -> Result<Self, ScriptFailure> {
        let lua = Lua::new_with(
            StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8,
            LuaOptions::default(),
        )
        .map_err(|e| ScriptFailure::Compile(e.to_string()))?;
        let budget = Arc::new(Budget {
            epoch: Instant::now(),
            instructions_left: AtomicU64::new(0),
            deadline_ns: AtomicU64::new(0),
            tripped: AtomicU8::new(TRIPPED_NONE),
        });
        install_sandbox(&lua, name, &budget).map_err(|e| ScriptFailure::Compile(e.to_string()))?;
        let hook_budget = budget.clone();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| hook_budget.tick(),
        )
        .map_err(|e| ScriptFailure::Compile(e.to_string()))?;
        lua.set_memory_limit(limits.max_memory_bytes)
            .map_err(|e| ScriptFailure::Compile(e.to_string()))?;

        let chunk = lua
            .load(source)
            .set_name(format!("={name}"))
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| match e {
                mlua::Error::MemoryError(_) => ScriptFailure::MemoryLimit(limits.max_memory_bytes),
                e => ScriptFailure::Compile(e.to_string()),
            })?;
        budget.start(&limits);
        let top = chunk.call::<()>(());
        if let Err(e) = top {
            return Err(failure(&budget, &limits, e));
        }
        let entry = match lua.globals().get::<Value>("encodeInp") {
            Ok(Value::Function(f)) => f,
            _ => {
                return Err(ScriptFailure::Compile(
                    "the script does not define function encodeInp(msg, topic)".into(),
                ));
            }
        };
        Ok(Self {
            lua,
            entry,
            budget,
            limits,
        })
    }

    /// Runs `encodeInp(payload, topic)`: the payload reaches Lua as a string of its
    /// raw bytes, and the result must be a string.
    ///
    /// # Errors
    /// A [`ScriptFailure`] for an error, a limit, or a result that is not a string
    /// (or is longer than the output limit).
    pub fn call(&self, payload: &[u8], topic: &str) -> Result<Vec<u8>, ScriptFailure> {
        self.budget.start(&self.limits);
        let msg = self
            .lua
            .create_string(payload)
            .map_err(|e| failure(&self.budget, &self.limits, e))?;
        let result = self.entry.call::<Value>((msg, topic));
        match result {
            Ok(Value::String(s)) => {
                let bytes = s.as_bytes();
                if bytes.len() > self.limits.max_output_bytes {
                    return Err(ScriptFailure::BadOutput(format!(
                        "{} bytes, more than the {} allowed",
                        bytes.len(),
                        self.limits.max_output_bytes
                    )));
                }
                Ok(bytes.to_vec())
            }
            Ok(other) => Err(ScriptFailure::BadOutput(format!(
                "encodeInp returned a {}, not a string",
                other.type_name()
            ))),
            Err(e) => Err(failure(&self.budget, &self.limits, e)),
        }
    }

    /// Whether the state should be thrown away after a failure: a memory error may
    /// leave it without room for the next message.
    pub(crate) fn is_spent(failure: &ScriptFailure) -> bool {
        matches!(failure, ScriptFailure::MemoryLimit(_))
    }

    /// Bytes the state holds now.
    pub fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }
}

/// The failure an error of a call stands for: the limit that was hit, if one was.
fn failure(budget: &Budget, limits: &ScriptLimits, e: mlua::Error) -> ScriptFailure {
    match budget.tripped() {
        TRIPPED_INSTRUCTIONS => return ScriptFailure::InstructionLimit(limits.max_instructions),
        TRIPPED_TIMEOUT => {
            return ScriptFailure::Timeout(limits.timeout.as_millis() as u64);
        }
        TRIPPED_MEMORY => return ScriptFailure::MemoryLimit(limits.max_memory_bytes),
        _ => {}
    }
    if is_memory_error(&e) {
        return ScriptFailure::MemoryLimit(limits.max_memory_bytes);
    }
    let mut text = e.to_string();
    // the traceback of a callback error adds nothing a script author can use
    if let Some(cut) = text.find("\nstack traceback:") {
        text.truncate(cut);
    }
    ScriptFailure::Runtime(text)
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

/// Removes what a data script must not reach and adds `require("json")`, a logging
/// `print` and limit-aware `pcall`/`xpcall`.
fn install_sandbox(lua: &Lua, name: &str, budget: &Arc<Budget>) -> mlua::Result<()> {
    let globals = lua.globals();
    for banned in ["dofile", "loadfile", "load", "collectgarbage"] {
        globals.set(banned, Value::Nil)?;
    }
    let string: mlua::Table = globals.get("string")?;
    string.set("dump", Value::Nil)?;

    let json = super::json::module(lua)?;
    let require = lua.create_function(move |_, module: String| {
        if module == "json" {
            Ok(json.clone())
        } else {
            Err(mlua::Error::runtime(format!(
                "module '{module}' not found: data scripts may require only \"json\""
            )))
        }
    })?;
    globals.set("require", require)?;

    let script = name.to_owned();
    let print = lua.create_function(move |_, args: MultiValue| {
        let line = args
            .iter()
            .map(|v| v.to_string().unwrap_or_else(|_| v.type_name().to_owned()))
            .collect::<Vec<_>>()
            .join("\t");
        let line: String = line.chars().take(512).collect();
        tracing::debug!(target: "tp_broker::script", script = %script, "{line}");
        Ok(())
    })?;
    globals.set("print", print)?;

    // A limit's error must not be caught: after the original pcall returns, re-raise
    // when a limit was hit (an out-of-memory error caught inside counts as one).
    for protected in ["pcall", "xpcall"] {
        let original: Function = globals.get(protected)?;
        let budget = budget.clone();
        let wrapper = lua.create_function(move |_, args: MultiValue| {
            let out: MultiValue = original.call(args)?;
            if budget.tripped() == TRIPPED_NONE
                && out
                    .front()
                    .is_some_and(|ok| matches!(ok, Value::Boolean(false)))
                && out.get(1).is_some_and(is_memory_message)
            {
                return Err(budget.trip(TRIPPED_MEMORY));
            }
            if budget.tripped() != TRIPPED_NONE {
                return Err(mlua::Error::runtime(LIMIT_MESSAGE));
            }
            Ok(out)
        })?;
        globals.set(protected, wrapper)?;
    }
    Ok(())
}

fn is_memory_message(v: &Value) -> bool {
    match v {
        Value::String(s) => s.to_string_lossy().contains("not enough memory"),
        Value::Error(e) => is_memory_error(e),
        _ => false,
    }
}
