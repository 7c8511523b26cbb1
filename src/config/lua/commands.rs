//! Lua's `os.execute` and `io.popen`, replaced (SPEC §17): the commands
//! spawn through `process/` (so the daemon's reaper never steals their
//! status and no signal sent to the daemon is lost), in a process group of
//! their own with the children's environment hygiene, bounded by the
//! running call's budget; `io.popen` files are a userdata with Lua's own
//! `read`/`lines`/`write`/`close` behaviour.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Lua's `__name` for the files `io.popen` returns.
pub(super) const PIPE_NAME: &str = "popen file";
/// Registry key of the pipe files' method table.
pub(super) const PIPE_METHODS_KEY: &str = "taskmaster.pipe_methods";
/// Registry key of the pipe files' `__close`.
pub(super) const PIPE_CLOSE_KEY: &str = "taskmaster.pipe_close";
/// How much a pipe read asks for at once.
pub(super) const PIPE_CHUNK: usize = 8192;
/// Lua's limit on the length of a numeral `read("n")` scans.
pub(super) const MAX_NUMERAL: usize = 200;

/// Lua side of the commands: the public functions and the pipe methods.
pub(super) const COMMANDS: &str = r##"
local raw_execute, raw_popen, raw_read, raw_write, raw_close, raw_flush, kind = ...
local lua_type, lua_close = io.type, io.close
local pack, unpack, select = table.pack, table.unpack, select

-- Tail-called by the wrappers: level 2 is the wrapper's caller.
local function check(ok, ...)
  if ok then return ... end
  error((...), 2)
end

function os.execute(cmd) return check(raw_execute(cmd)) end
function io.popen(cmd, mode) return check(raw_popen(cmd, mode)) end
function io.type(f)
  local k = kind(f)
  if k then return k end
  return lua_type(f)
end
function io.close(...)
  local f = ...
  if kind(f) then return check(raw_close(f)) end
  return lua_close(...)
end

local methods = {}
function methods.read(f, ...) return check(raw_read(f, ...)) end
function methods.write(f, ...) return check(raw_write(f, ...)) end
function methods.close(f) return check(raw_close(f)) end
function methods.flush(f) return check(raw_flush(f)) end
function methods.lines(f, ...)
  if kind(f) ~= "file" then error("attempt to use a closed file", 2) end
  local n, formats = select("#", ...), { ... }
  return function()
    if kind(f) ~= "file" then error("file is already closed", 2) end
    local r = pack(raw_read(f, unpack(formats, 1, n)))
    if not r[1] then error(r[2], 2) end
    if r[2] ~= nil then return unpack(r, 2, r.n) end
    if r[3] ~= nil then error(r[3], 2) end
    return nil
  end
end
local function close(f)
  if kind(f) == "file" then raw_close(f) end
end
return methods, close
"##;

/// Installs `os.execute`, `io.popen`, and an `io.type`/`io.close` that know
/// its files.
pub(super) fn install_commands(lua: &Lua) -> mlua::Result<()> {
    let kind = lua.create_function(|_, v: LuaValue| {
        Ok(match &v {
            LuaValue::UserData(ud) => ud.borrow::<PipeFile>().ok().map(|f| {
                if f.shell.is_some() {
                    "file"
                } else {
                    "closed file"
                }
            }),
            _ => None,
        })
    })?;
    let (methods, close): (Table, Function) = lua.load(COMMANDS).set_name("=taskmaster").call((
        lua.create_function(raw_execute)?,
        lua.create_function(raw_popen)?,
        lua.create_function(raw_read)?,
        lua.create_function(raw_write)?,
        lua.create_function(|lua, ud: AnyUserData| close_pipe(lua, &ud))?,
        lua.create_function(raw_flush)?,
        kind,
    ))?;
    lua.set_named_registry_value(PIPE_METHODS_KEY, methods)?;
    lua.set_named_registry_value(PIPE_CLOSE_KEY, close)?;
    Ok(())
}

/// `true, values...`: a successful result for the Lua wrappers.
pub(super) fn success(values: impl IntoIterator<Item = LuaValue>) -> MultiValue {
    std::iter::once(LuaValue::Boolean(true))
        .chain(values)
        .collect()
}

/// `false, message`: the Lua wrapper raises `message` at its caller.
pub(super) fn failure(lua: &Lua, message: impl AsRef<str>) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_iter([
        LuaValue::Boolean(false),
        LuaValue::String(lua.create_string(message.as_ref())?),
    ]))
}

/// A command was killed at the deadline: the running call is cut off, as
/// when the instruction hook finds the budget spent. Level 2 is the code
/// that called the Lua wrapper.
pub(super) fn cut_off(lua: &Lua, what_ran: &str) -> mlua::Error {
    let place = lua
        .inspect_stack(2, |debug| {
            let src = debug.source();
            match (src.short_src, debug.current_line()) {
                (Some(file), Some(line)) => format!("{file}:{line}: "),
                _ => String::new(),
            }
        })
        .unwrap_or_default();
    let armed = lua.app_data_ref::<Armed>().map(|a| a.clone());
    match armed {
        Some(a) => trip(
            lua,
            &a.budget,
            format!("{place}{} ran out of time ({what_ran} killed)", a.what),
        ),
        None => mlua::Error::runtime(format!("{place}{what_ran} killed: out of time")),
    }
}

/// A string argument as bytes (a number is converted, as Lua does), or
/// the message of Lua's argument error.
pub(super) fn string_arg(
    lua: &Lua,
    v: &LuaValue,
    n: usize,
    func: &str,
) -> mlua::Result<Result<Vec<u8>, String>> {
    Ok(match v {
        LuaValue::String(s) => Ok(s.as_bytes().to_vec()),
        LuaValue::Integer(_) | LuaValue::Number(_) => Ok(lua
            .coerce_string(v.clone())?
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_default()),
        other => Err(format!(
            "bad argument #{n} to '{func}' (string expected, got {})",
            other.type_name()
        )),
    })
}

/// `nil, message, errno`, as `luaL_fileresult` gives on failure.
pub(super) fn io_failure(
    lua: &Lua,
    e: &std::io::Error,
    prefix: Option<&[u8]>,
) -> mlua::Result<Vec<LuaValue>> {
    let errno = e.raw_os_error().unwrap_or(0);
    // strerror's words, without the " (os error N)" std adds.
    let text = e.to_string();
    let suffix = format!(" (os error {errno})");
    let text = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
    let message = match prefix {
        Some(p) => format!("{}: {text}", String::from_utf8_lossy(p)),
        None => text,
    };
    Ok(vec![
        LuaValue::Nil,
        LuaValue::String(lua.create_string(message)?),
        LuaValue::Integer(errno.into()),
    ])
}

/// `true|nil, "exit"|"signal", code`, as `luaL_execresult` gives.
pub(super) fn exec_result(lua: &Lua, exit: Exit) -> mlua::Result<Vec<LuaValue>> {
    let (ok, what, code) = match exit {
        Exit::Code(0) => (LuaValue::Boolean(true), "exit", 0),
        Exit::Code(c) => (LuaValue::Nil, "exit", c),
        Exit::Signal(s) => (LuaValue::Nil, "signal", s as i32),
    };
    Ok(vec![
        ok,
        LuaValue::String(lua.create_string(what)?),
        LuaValue::Integer(code.into()),
    ])
}

/// Lua's `os.execute([cmd])`.
pub(super) fn raw_execute(lua: &Lua, cmd: Option<LuaValue>) -> mlua::Result<MultiValue> {
    let Some(cmd) = cmd.filter(|c| !c.is_nil()) else {
        // "Is a shell available?"
        return Ok(success([LuaValue::Boolean(true)]));
    };
    let cmd = match string_arg(lua, &cmd, 1, "execute")? {
        Ok(c) => c,
        Err(m) => return failure(lua, m),
    };
    let mut shell = match Shell::spawn(OsStr::from_bytes(&cmd), "os.execute", Capture::Nothing) {
        Ok(s) => s,
        Err(e) => return Ok(success(io_failure(lua, &e, None)?)),
    };
    match shell.finish(deadline(lua)) {
        Ok(exit) => Ok(success(exec_result(lua, exit)?)),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(cut_off(lua, &format!("os.execute[{}]", shell.pid())))
        }
        Err(e) => Ok(success(io_failure(lua, &e, None)?)),
    }
}

/// Lua's `io.popen(cmd [, mode])`.
pub(super) fn raw_popen(
    lua: &Lua,
    (cmd, mode): (LuaValue, Option<LuaValue>),
) -> mlua::Result<MultiValue> {
    let cmd = match string_arg(lua, &cmd, 1, "popen")? {
        Ok(c) => c,
        Err(m) => return failure(lua, m),
    };
    let mode = match mode.filter(|m| !m.is_nil()) {
        None => b"r".to_vec(),
        Some(m) => match string_arg(lua, &m, 2, "popen")? {
            Ok(m) => m,
            Err(m) => return failure(lua, m),
        },
    };
    let capture = match mode.as_slice() {
        b"r" => Capture::Stdout,
        b"w" => Capture::Stdin,
        _ => return failure(lua, "bad argument #2 to 'popen' (invalid mode)"),
    };
    let shell = match Shell::spawn(OsStr::from_bytes(&cmd), "io.popen", capture) {
        Ok(s) => s,
        Err(e) => return Ok(success(io_failure(lua, &e, Some(&cmd))?)),
    };
    let file = PipeFile {
        shell: Some(shell),
        buf: Vec::new(),
        pos: 0,
        eof: false,
        writing: capture == Capture::Stdin,
    };
    Ok(success([LuaValue::UserData(lua.create_userdata(file)?)]))
}

/// `f:read(...)`.
pub(super) fn raw_read(
    lua: &Lua,
    (ud, formats): (AnyUserData, MultiValue),
) -> mlua::Result<MultiValue> {
    let mut f = ud.borrow_mut::<PipeFile>()?;
    let formats: Vec<LuaValue> = formats.into_iter().collect();
    f.read(lua, &formats)
}

/// `f:write(...)`: the file, or `nil, message, errno`.
pub(super) fn raw_write(
    lua: &Lua,
    (ud, values): (AnyUserData, MultiValue),
) -> mlua::Result<MultiValue> {
    let values: Vec<LuaValue> = values.into_iter().collect();
    let result = ud.borrow_mut::<PipeFile>()?.write(lua, &values)?;
    match result {
        Err(m) => failure(lua, m),
        Ok(None) => Ok(success([LuaValue::UserData(ud)])),
        Ok(Some(e)) => Ok(success(io_failure(lua, &e, None)?)),
    }
}

/// `f:flush()`: writes are not buffered, so only the check that it is open.
pub(super) fn raw_flush(lua: &Lua, ud: AnyUserData) -> mlua::Result<MultiValue> {
    if ud.borrow::<PipeFile>()?.shell.is_none() {
        return failure(lua, "attempt to use a closed file");
    }
    Ok(success([LuaValue::UserData(ud)]))
}

/// `f:close()` / `io.close(f)`: Lua's `pclose` results.
pub(super) fn close_pipe(lua: &Lua, ud: &AnyUserData) -> mlua::Result<MultiValue> {
    let mut f = ud.borrow_mut::<PipeFile>()?;
    let Some(mut shell) = f.shell.take() else {
        return failure(lua, "attempt to use a closed file");
    };
    match shell.finish(deadline(lua)) {
        Ok(exit) => Ok(success(exec_result(lua, exit)?)),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(cut_off(lua, &format!("io.popen[{}]", shell.pid())))
        }
        Err(e) => Ok(success(io_failure(lua, &e, None)?)),
    }
}

/// What `io.popen` returns: a pipe from (mode "r") or to ("w") a command.
/// Dropped without a close (garbage), the command is reaped off the Lua thread.
pub(super) struct PipeFile {
    /// The command; None once closed.
    shell: Option<Shell>,
    /// Mode "r": bytes read from the command, consumed from `pos`.
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    pos: usize,
    /// Whether the command's output reached end of file.
    eof: bool,
    /// Mode "w".
    writing: bool,
}

/// One format of `read`/`lines`.
#[derive(Clone, Copy)]
pub(super) enum Format {
    /// A byte count (0: test for end of file).
    Count(usize),
    /// "n": a numeral.
    Number,
    /// "l" (false) or "L" (true: keep the newline).
    Line(bool),
    /// "a": everything left.
    All,
}

/// Why a read stopped short of a value.
pub(super) enum ReadError {
    /// The pipe failed (Lua returns nil, message, errno).
    Io(std::io::Error),
    /// The budget ran out and the command was killed.
    CutOff,
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> ReadError {
        if e.kind() == std::io::ErrorKind::TimedOut {
            ReadError::CutOff
        } else {
            ReadError::Io(e)
        }
    }
}

impl PipeFile {
    /// Makes sure unread bytes are buffered; false at end of file.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<bool, ReadError> {
        if self.pos < self.buf.len() {
            return Ok(true);
        }
        let Some(shell) = self.shell.as_mut().filter(|_| !self.eof) else {
            return Ok(false);
        };
        self.buf.resize(PIPE_CHUNK, 0);
        self.pos = 0;
        match shell.read(&mut self.buf, deadline) {
            Ok(n) => {
                self.buf.truncate(n);
                self.eof = n == 0;
                Ok(n > 0)
            }
            Err(e) => {
                self.buf.clear();
                Err(e.into())
            }
        }
    }

    fn peek(&mut self, deadline: Option<Instant>) -> Result<Option<u8>, ReadError> {
        Ok(if self.fill(deadline)? {
            Some(self.buf[self.pos])
        } else {
            None
        })
    }

    fn line(
        &mut self,
        keep: bool,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<u8>>, ReadError> {
        let mut out = Vec::new();
        while self.fill(deadline)? {
            let rest = &self.buf[self.pos..];
            if let Some(i) = rest.iter().position(|&b| b == b'\n') {
                out.extend_from_slice(&rest[..if keep { i + 1 } else { i }]);
                self.pos += i + 1;
                return Ok(Some(out));
            }
            out.extend_from_slice(rest);
            self.pos = self.buf.len();
        }
        Ok((!out.is_empty()).then_some(out))
    }

    fn all(&mut self, deadline: Option<Instant>) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::new();
        while self.fill(deadline)? {
            out.extend_from_slice(&self.buf[self.pos..]);
            self.pos = self.buf.len();
        }
        Ok(out)
    }

    fn count(&mut self, n: usize, deadline: Option<Instant>) -> Result<Option<Vec<u8>>, ReadError> {
        if n == 0 {
            return Ok(self.fill(deadline)?.then(Vec::new));
        }
        let mut out = Vec::new();
        while out.len() < n && self.fill(deadline)? {
            let take = (n - out.len()).min(self.buf.len() - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// Takes the next byte into `text` when it is in `set` (`test2` and
    /// `readdigits` of Lua's `l_getn`); a numeral over 200 bytes is no numeral.
    fn accept(
        &mut self,
        set: &[u8],
        text: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<bool, ReadError> {
        match self.peek(deadline)? {
            Some(c) if set.contains(&c) && text.len() <= MAX_NUMERAL => {
                text.push(c);
                self.pos += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Scans a numeral the way Lua's `read("n")` does (`l_getn` in liolib.c):
    /// the longest prefix that can start a number.
    fn numeral(&mut self, deadline: Option<Instant>) -> Result<Vec<u8>, ReadError> {
        const DEC: &[u8] = b"0123456789";
        const HEX: &[u8] = b"0123456789abcdefABCDEF";
        while let Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) = self.peek(deadline)? {
            self.pos += 1;
        }
        let mut text = Vec::new();
        self.accept(b"-+", &mut text, deadline)?;
        let mut count = 0;
        let mut hex = false;
        if self.accept(b"0", &mut text, deadline)? {
            hex = self.accept(b"xX", &mut text, deadline)?;
            count = usize::from(!hex);
        }
        let digits = if hex { HEX } else { DEC };
        while self.accept(digits, &mut text, deadline)? {
            count += 1;
        }
        if self.accept(b".", &mut text, deadline)? {
            while self.accept(digits, &mut text, deadline)? {
                count += 1;
            }
        }
        let exponent: &[u8] = if hex { b"pP" } else { b"eE" };
        if count > 0 && self.accept(exponent, &mut text, deadline)? {
            self.accept(b"-+", &mut text, deadline)?;
            while self.accept(DEC, &mut text, deadline)? {}
        }
        Ok(text)
    }

    /// Reads with `formats` (none: a line), as Lua's `read` does: one value
    /// per format, stopping at the first that fails (which gives nil).
    fn read(&mut self, lua: &Lua, formats: &[LuaValue]) -> mlua::Result<MultiValue> {
        if self.shell.is_none() {
            return failure(lua, "attempt to use a closed file");
        }
        let mut parsed = Vec::with_capacity(formats.len().max(1));
        for (i, f) in formats.iter().enumerate() {
            match parse_format(lua, f, i + 1)? {
                Ok(f) => parsed.push(f),
                Err(m) => return failure(lua, m),
            }
        }
        if parsed.is_empty() {
            parsed.push(Format::Line(false));
        }
        if self.writing {
            let e = std::io::Error::from_raw_os_error(libc::EBADF);
            return Ok(success(io_failure(lua, &e, None)?));
        }
        let deadline = deadline(lua);
        let mut out = vec![LuaValue::Boolean(true)];
        for format in parsed {
            let value = match self.read_one(format, deadline) {
                Ok(None) => LuaValue::Nil,
                Ok(Some(Read::Bytes(b))) => LuaValue::String(lua.create_string(b)?),
                Ok(Some(Read::Numeral(text))) => string_to_number(lua, &text)?,
                Err(ReadError::Io(e)) => return Ok(success(io_failure(lua, &e, None)?)),
                Err(ReadError::CutOff) => {
                    let pid = self.shell.as_ref().map(Shell::pid).unwrap_or(0);
                    return Err(cut_off(lua, &format!("io.popen[{pid}]")));
                }
            };
            let failed = value.is_nil();
            out.push(value);
            if failed {
                break;
            }
        }
        Ok(out.into_iter().collect())
    }

    fn read_one(
        &mut self,
        format: Format,
        deadline: Option<Instant>,
    ) -> Result<Option<Read>, ReadError> {
        Ok(match format {
            Format::Count(n) => self.count(n, deadline)?.map(Read::Bytes),
            Format::Line(keep) => self.line(keep, deadline)?.map(Read::Bytes),
            Format::All => Some(Read::Bytes(self.all(deadline)?)),
            Format::Number => Some(Read::Numeral(self.numeral(deadline)?)),
        })
    }

    /// Writes each value (strings, or numbers formatted as Lua does).
    /// Ok(None) when written, Ok(Some(e)) when the pipe failed, Err(message)
    /// for a bad argument.
    #[allow(clippy::type_complexity)]
    fn write(
        &mut self,
        lua: &Lua,
        values: &[LuaValue],
    ) -> mlua::Result<Result<Option<std::io::Error>, String>> {
        let mut data = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match v {
                LuaValue::String(s) => data.extend_from_slice(&s.as_bytes()),
                LuaValue::Integer(n) => data.extend_from_slice(n.to_string().as_bytes()),
                LuaValue::Number(x) => data.extend_from_slice(lua_number_format(*x).as_bytes()),
                other => {
                    return Ok(Err(format!(
                        "bad argument #{} to 'write' (string expected, got {})",
                        i + 1,
                        other.type_name()
                    )))
                }
            }
        }
        let Some(shell) = self.shell.as_mut() else {
            return Ok(Err("attempt to use a closed file".into()));
        };
        if !self.writing {
            return Ok(Ok(Some(std::io::Error::from_raw_os_error(libc::EBADF))));
        }
        match shell.write_all(&data, deadline(lua)) {
            Ok(()) => Ok(Ok(None)),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                Err(cut_off(lua, &format!("io.popen[{}]", shell.pid())))
            }
            Err(e) => Ok(Ok(Some(e))),
        }
    }
}

/// What one format read.
pub(super) enum Read {
    /// Bytes for a string.
    Bytes(Vec<u8>),
    /// The text of a numeral, still to convert.
    Numeral(Vec<u8>),
}

/// One argument of `read`/`lines`: a byte count, or "n", "l", "L", "a"
/// (optionally spelled with the Lua 5.1 `*`); Err is Lua's argument error.
pub(super) fn parse_format(
    lua: &Lua,
    v: &LuaValue,
    n: usize,
) -> mlua::Result<Result<Format, String>> {
    let invalid = || Err(format!("bad argument #{n} to 'read' (invalid format)"));
    let not_string = |v: &LuaValue| {
        Err(format!(
            "bad argument #{n} to 'read' (string expected, got {})",
            v.type_name()
        ))
    };
    Ok(match v {
        LuaValue::Integer(_) | LuaValue::Number(_) => match lua.coerce_integer(v.clone())? {
            Some(count) => Ok(Format::Count(usize::try_from(count).unwrap_or(usize::MAX))),
            None => Err(format!(
                "bad argument #{n} to 'read' (number has no integer representation)"
            )),
        },
        LuaValue::String(s) => {
            let b = s.as_bytes();
            let b = b.strip_prefix(b"*").unwrap_or(&b);
            match b.first() {
                Some(b'n') => Ok(Format::Number),
                Some(b'l') => Ok(Format::Line(false)),
                Some(b'L') => Ok(Format::Line(true)),
                Some(b'a') => Ok(Format::All),
                _ => invalid(),
            }
        }
        other => not_string(other),
    })
}

/// `lua_stringtonumber`: an integer when the numeral has no fraction or
/// exponent (and fits), else a float; nil when it is no numeral.
pub(super) fn string_to_number(lua: &Lua, text: &[u8]) -> mlua::Result<LuaValue> {
    if text.is_empty() || text.len() > MAX_NUMERAL {
        return Ok(LuaValue::Nil);
    }
    let unsigned = text
        .strip_prefix(b"-")
        .or(text.strip_prefix(b"+"))
        .unwrap_or(text);
    let hex = unsigned.starts_with(b"0x") || unsigned.starts_with(b"0X");
    let float_marks: &[u8] = if hex { b".pP" } else { b".eE" };
    let s = lua.create_string(text)?;
    if !text.iter().any(|c| float_marks.contains(c)) {
        if let Some(i) = lua.coerce_integer(LuaValue::String(s.clone()))? {
            return Ok(LuaValue::Integer(i));
        }
    }
    Ok(match lua.coerce_number(LuaValue::String(s))? {
        Some(x) => LuaValue::Number(x),
        None => LuaValue::Nil,
    })
}

/// A float as Lua's `write` formats it (`%.14g`).
pub(super) fn lua_number_format(x: f64) -> String {
    let mut buf = [0u8; 64];
    // SAFETY: the buffer and its length are valid, and the format takes one double.
    let n = unsafe { libc::snprintf(buf.as_mut_ptr().cast(), buf.len(), c"%.14g".as_ptr(), x) };
    let n = usize::try_from(n).unwrap_or(0).min(buf.len() - 1);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

impl UserData for PipeFile {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_meta_field(MetaMethod::Type, PIPE_NAME);
        // The methods are the Lua wrappers of COMMANDS, so their errors are
        // strings at the caller's line.
        fields.add_meta_field_with(MetaMethod::Index, |lua| {
            lua.named_registry_value::<Table>(PIPE_METHODS_KEY)
        });
        fields.add_meta_field_with(MetaMethod::Close, |lua| {
            lua.named_registry_value::<Function>(PIPE_CLOSE_KEY)
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_function(MetaMethod::ToString, |_, ud: AnyUserData| {
            Ok(if ud.borrow::<PipeFile>()?.shell.is_some() {
                format!("file ({:p})", ud.to_pointer())
            } else {
                "file (closed)".to_string()
            })
        });
    }
}
