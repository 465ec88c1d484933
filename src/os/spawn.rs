//! Fork and exec one worker.
//!
//! Everything the child needs is prepared before `fork` ([`Prepared`]): argv and envp as
//! NUL-terminated byte buffers with pointer arrays, the fd plan, uid/gid/groups, workdir. Between
//! `fork` and `execve` the child makes only async-signal-safe system calls: no allocation, no
//! locks, no logging. `LISTEN_PID` must be the child's own pid, which nobody knows before `fork`,
//! so its envp entry is reserved as `LISTEN_PID=` plus 20 bytes and the child writes the digits of
//! `getpid()` into it. `std::process::Command` cannot do that (it builds envp before `fork` and
//! gives `pre_exec` no way to change it), hence this module.
//!
//! Failure anywhere in the child is written to a close-on-exec pipe as (step, errno) and the child
//! `_exit(127)`s; the parent reads that pipe: EOF means `execve` succeeded.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::fds::unsafe_free_borrow;
use crate::launch::{resources, Child, Credentials, SpawnError, SpawnRequest};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Setpgid = 1,
    Pdeathsig,
    Fds,
    Groups,
    Gid,
    Uid,
    Chdir,
    Exec,
}

impl Step {
    fn describe(code: u8) -> &'static str {
        match code {
            1 => "setpgid",
            2 => "set the parent-death signal",
            3 => "set up file descriptors",
            4 => "setgroups",
            5 => "setgid",
            6 => "setuid",
            7 => "chdir to the workdir",
            _ => "exec",
        }
    }
}

/// Buffers the child uses, allocated before `fork`.
struct Prepared {
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// Owns the envp strings that `envp_ptrs` and `pid_digits` point into.
    _env: Vec<Vec<u8>>,
    /// Where the digits of the child's pid go, inside `_env` (one per `pid_vars` entry).
    pid_digits: Vec<*mut u8>,
    workdir: Option<CString>,
    listen_fds: Vec<RawFd>,
    /// Scratch space for the temporary copies of `listen_fds`.
    scratch: Vec<RawFd>,
    credentials: Option<Credentials>,
    master: libc::pid_t,
    /// The descriptor limit the master was started with, given back to the worker.
    nofile: Option<libc::rlimit>,
    /// The nice value to start at (`reload.start_nice` over the master's own), if any.
    nice: Option<libc::c_int>,
}

const PID_DIGITS: usize = 20;

fn cstring(s: &[u8], what: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Nul(what.into()))
}

impl Prepared {
    fn new(req: &SpawnRequest<'_>) -> Result<Prepared, SpawnError> {
        let program = cstring(req.program.as_os_str().as_bytes(), "program path")?;
        let argv: Vec<CString> =
            req.argv.iter().map(|a| cstring(a.as_bytes(), "an argument")).collect::<Result<_, _>>()?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env: Vec<Vec<u8>> = Vec::with_capacity(req.env.len() + 1);
        for (k, v) in req.env {
            let mut e = Vec::with_capacity(k.len() + v.len() + 2);
            e.extend_from_slice(k.as_bytes());
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            if e.contains(&0) {
                return Err(SpawnError::Nul(format!("environment variable {k}")));
            }
            e.push(0);
            env.push(e);
        }
        // `NAME=` followed by room for the digits and the NUL, filled in by the child.
        let first_reserved = env.len();
        for name in req.pid_vars {
            let mut e = Vec::with_capacity(name.len() + 1 + PID_DIGITS + 1);
            e.extend_from_slice(name.as_bytes());
            e.push(b'=');
            e.resize(name.len() + 1 + PID_DIGITS + 1, 0);
            env.push(e);
        }
        // Pointers into the reserved buffers first, through Vec::as_mut_ptr (which makes no
        // reference to the bytes), then the shared envp pointers: the child's writes through the
        // former do not invalidate the latter. The buffers are never resized again, so every
        // pointer stays valid as long as `env` lives (it moves into `Prepared` with them).
        let mut pid_digits = Vec::with_capacity(req.pid_vars.len());
        for (k, name) in req.pid_vars.iter().enumerate() {
            // SAFETY: offset name.len() + 1 is inside the buffer (its length is name + 1 + 21).
            pid_digits.push(unsafe { env[first_reserved + k].as_mut_ptr().add(name.len() + 1) });
        }
        let mut envp_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr().cast()).collect();
        envp_ptrs.push(std::ptr::null());
        let workdir = req.workdir.map(|w| cstring(w.as_os_str().as_bytes(), "workdir")).transpose()?;
        Ok(Prepared {
            program,
            _argv: argv,
            argv_ptrs,
            envp_ptrs,
            _env: env,
            pid_digits,
            workdir,
            listen_fds: req.fds.iter().map(|f| f.as_raw_fd()).collect(),
            scratch: vec![-1; req.fds.len()],
            credentials: req.credentials.cloned(),
            master: std::process::id() as libc::pid_t,
            nofile: crate::launch::original_rlimit()
                .map(|(soft, hard)| libc::rlimit { rlim_cur: soft, rlim_max: hard }),
            nice: req.nice,
        })
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(resources("create a pipe"))
}

/// Start one worker. On success the child has exec'd `program`.
pub fn spawn(req: &SpawnRequest<'_>) -> Result<Child, SpawnError> {
    let mut prep = Prepared::new(req)?;
    let output = |fd: i32| -> Result<(Option<OwnedFd>, OwnedFd), SpawnError> {
        if req.inherit_output {
            let own = nix::unistd::dup(unsafe_free_borrow(fd)).map_err(resources(format!("duplicate fd {fd}")))?;
            nix::fcntl::fcntl(&own, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
                .map_err(resources("set close-on-exec"))?;
            Ok((None, own))
        } else {
            let (r, w) = pipe()?;
            Ok((Some(r), w))
        }
    };
    let (out_r, out_w) = output(1)?;
    let (err_r, err_w) = output(2)?;
    let (status_r, status_w) = pipe()?;
    let devnull = std::fs::File::open("/dev/null")
        .map_err(|e| SpawnError::Resources { what: "open /dev/null".into(), error: e.to_string() })?;

    // SAFETY: corral's master is single-threaded (tokio current_thread runtime, no blocking pool),
    // so no other thread can hold a lock the child would need; and the child branch below only
    // makes async-signal-safe calls on memory prepared before this point, then execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(match Errno::last() {
            Errno::EAGAIN => SpawnError::ForkLimit,
            e => SpawnError::Fork(e.desc().into()),
        });
    }
    if pid == 0 {
        let fds = ChildFds {
            stdin: devnull.as_raw_fd(),
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
            status: status_w.as_raw_fd(),
        };
        // SAFETY: we are the freshly forked child; `child_main` never returns.
        unsafe { child_main(&mut prep, fds) }
    }
    // Parent. Also set the group here, so a signal to the group cannot race the child's setpgid.
    let _ = nix::unistd::setpgid(Pid::from_raw(pid), Pid::from_raw(pid));
    drop((out_w, err_w, status_w, devnull));
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(&status_r, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(resources(format!("read the status of worker {pid}"))(e)),
        }
    }
    drop(prep);
    if got == 0 {
        return Ok(Child { pid: Pid::from_raw(pid), stdout: out_r, stderr: err_r });
    }
    // The child failed before exec and is exiting: reap it now so it never lingers.
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
    let errno = Errno::from_raw(i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]));
    let program = req.argv.first().map(String::as_str).unwrap_or("");
    let as_user = req.credentials.map(|c| format!(" as uid {}", c.uid)).unwrap_or_default();
    let resolved =
        if req.program.as_os_str() == program { String::new() } else { format!(" ({})", req.program.display()) };
    let error = errno.desc().to_string();
    Err(match buf[0] {
        s if s == Step::Exec as u8 => SpawnError::Exec { program: program.into(), resolved, as_user, error },
        s if s == Step::Chdir as u8 => {
            SpawnError::Chdir { dir: req.workdir.map(|w| w.display().to_string()).unwrap_or_default(), error }
        }
        s => SpawnError::Setup { step: Step::describe(s), program: program.into(), error },
    })
}

#[derive(Clone, Copy)]
struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    status: RawFd,
}

/// Report `step` and errno on the status pipe and exit. Async-signal-safe.
unsafe fn fail(status: RawFd, step: Step) -> ! {
    let errno = *libc::__errno_location();
    let e = errno.to_ne_bytes();
    let msg = [step as u8, e[0], e[1], e[2], e[3]];
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is on the stack.
    unsafe {
        libc::write(status, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// The child between `fork` and `execve`. Only async-signal-safe calls; no allocation.
unsafe fn child_main(p: &mut Prepared, fds: ChildFds) -> ! {
    // SAFETY (whole block): every call is a raw async-signal-safe system call on memory that was
    // allocated before fork and is not resized here; errors end in `fail`, which only writes and
    // _exits.
    unsafe {
        if libc::setpgid(0, 0) != 0 {
            fail(fds.status, Step::Setpgid);
        }
        // A start at lower priority (inherited by every thread and child it makes); best
        // effort: a failure leaves it at the master's.
        if let Some(nice) = p.nice {
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
        }
        // Die with the master. It may already have died before prctl: then our parent changed.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            fail(fds.status, Step::Pdeathsig);
        }
        if libc::getppid() != p.master {
            libc::_exit(127);
        }
        // Undo the master's signal state: empty mask, default dispositions (SIGPIPE is ignored
        // by Rust programs, and ignored signals survive exec).
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        // The raw system call, because glibc's sigaction() refuses signals 32 and 33 (its own),
        // which may still arrive ignored from whoever started us. An all-zero kernel
        // `struct sigaction` (handler, flags, restorer, mask) is SIG_DFL with no flags.
        let dfl = [0u64; 4];
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), std::ptr::null_mut::<u64>(), 8usize);
            }
        }
        // File descriptors: first copy every source above the highest target (so placing one
        // cannot clobber another), then dup2 each into place.
        let n = p.listen_fds.len() as RawFd;
        let base = 3 + n;
        let dup_high = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, base);
        let status = dup_high(fds.status);
        if status < 0 {
            fail(fds.status, Step::Fds);
        }
        let (stdin, stdout, stderr) = (dup_high(fds.stdin), dup_high(fds.stdout), dup_high(fds.stderr));
        if stdin < 0 || stdout < 0 || stderr < 0 {
            fail(status, Step::Fds);
        }
        for i in 0..p.listen_fds.len() {
            let tmp = dup_high(p.listen_fds[i]);
            if tmp < 0 {
                fail(status, Step::Fds);
            }
            p.scratch[i] = tmp;
        }
        if libc::dup2(stdin, 0) < 0 || libc::dup2(stdout, 1) < 0 || libc::dup2(stderr, 2) < 0 {
            fail(status, Step::Fds);
        }
        for i in 0..p.listen_fds.len() {
            let target = 3 + i as RawFd;
            // dup2 clears FD_CLOEXEC on the new fd; clear it explicitly anyway, as the protocol
            // requires the fd to survive exec whatever dup2 did.
            if libc::dup2(p.scratch[i], target) < 0 || libc::fcntl(target, libc::F_SETFD, 0) < 0 {
                fail(status, Step::Fds);
            }
        }
        // Everything from `base` up closes at exec (the status pipe must stay open until then).
        if libc::syscall(libc::SYS_close_range, base as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC) != 0
        {
            // Kernels before 5.11: mark them one by one.
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur.min(65536) as RawFd
            } else {
                4096
            };
            for fd in base..max {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        if let Some(c) = &p.credentials {
            if libc::setgroups(c.groups.len(), c.groups.as_ptr()) != 0 {
                fail(status, Step::Groups);
            }
            if libc::setgid(c.gid) != 0 {
                fail(status, Step::Gid);
            }
            if libc::setuid(c.uid) != 0 {
                fail(status, Step::Uid);
            }
        }
        if let Some(dir) = &p.workdir {
            if libc::chdir(dir.as_ptr()) != 0 {
                fail(status, Step::Chdir);
            }
        }
        // The master raised its own soft limit; workers start with the one it was given, as
        // systemd's services do (select() users break above 1024). Failure leaves it higher,
        // which harms nothing.
        if let Some(limit) = &p.nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, limit);
        }
        let pid = libc::getpid() as u64;
        for i in 0..p.pid_digits.len() {
            write_decimal(p.pid_digits[i], pid);
        }
        libc::execve(p.program.as_ptr(), p.argv_ptrs.as_ptr(), p.envp_ptrs.as_ptr());
        fail(status, Step::Exec)
    }
}

/// Write `n` in decimal followed by NUL at `dst`, which has room for [`PID_DIGITS`] + 1 bytes.
/// No allocation, no formatting machinery: safe to call between fork and exec.
unsafe fn write_decimal(dst: *mut u8, mut n: u64) {
    let mut digits = [0u8; PID_DIGITS];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == PID_DIGITS {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: `dst` points at PID_DIGITS + 1 writable bytes and len <= PID_DIGITS.
        unsafe { *dst.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: as above; len <= PID_DIGITS so index len is within the buffer.
    unsafe { *dst.add(len) = 0 };
}

/// The digits written for `n`, for tests of the no-alloc formatter.
#[cfg(test)]
fn decimal(n: u64) -> String {
    let mut buf = [0xffu8; PID_DIGITS + 1];
    // SAFETY: `buf` has PID_DIGITS + 1 bytes.
    unsafe { write_decimal(buf.as_mut_ptr(), n) };
    std::ffi::CStr::from_bytes_until_nul(&buf).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn decimal_formatting_without_allocation() {
        for n in [0u64, 7, 10, 4_194_304, u32::MAX as u64, u64::MAX] {
            assert_eq!(decimal(n), n.to_string());
        }
    }

    #[test]
    fn exec_failure_is_reported_with_the_real_error() {
        let req = SpawnRequest {
            program: Path::new("/nonexistent/program"),
            argv: &["program".into()],
            env: &[],
            pid_vars: &[],
            fds: &[],
            workdir: None,
            credentials: None,
            inherit_output: false,
            nice: None,
        };
        let err = spawn(&req).unwrap_err();
        assert!(matches!(err, SpawnError::Exec { .. }));
        assert_eq!(err.to_string(), "cannot execute program (/nonexistent/program): No such file or directory");
        let req = SpawnRequest { program: Path::new("/bin/true"), workdir: Some(Path::new("/nonexistent")), ..req };
        let err = spawn(&req).unwrap_err();
        assert_eq!(err.to_string(), "cannot chdir to /nonexistent: No such file or directory");
    }

    #[test]
    fn listen_pid_is_the_child_pid_and_output_is_piped() {
        let env = [("PATH".to_string(), "/bin:/usr/bin".to_string())];
        let req = SpawnRequest {
            program: Path::new("/bin/sh"),
            argv: &["sh".into(), "-c".into(), "echo \"$LISTEN_PID $$ $WATCHDOG_PID\"; echo err >&2".into()],
            env: &env,
            pid_vars: &["LISTEN_PID", "WATCHDOG_PID"],
            fds: &[],
            workdir: Some(Path::new("/")),
            credentials: None,
            inherit_output: false,
            nice: None,
        };
        let child = spawn(&req).unwrap();
        let mut out = String::new();
        use std::io::Read;
        std::fs::File::from(child.stdout.unwrap()).read_to_string(&mut out).unwrap();
        let mut err = String::new();
        std::fs::File::from(child.stderr.unwrap()).read_to_string(&mut err).unwrap();
        nix::sys::wait::waitpid(child.pid, None).unwrap();
        let pid = child.pid.to_string();
        assert_eq!(out.trim(), format!("{pid} {pid} {pid}"));
        assert_eq!(err.trim(), "err");
    }
}
