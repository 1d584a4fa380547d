//! The `dcol` command line. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or
//! bad configuration.
#![deny(unsafe_code)]

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use dcol::{config, control, daemon, member, trust};

const USAGE: &str = "\
dcol — the Detour Collective daemon

usage:
  dcol run [--config FILE]          run the daemon in the foreground (default /etc/config/dcol)
  dcol status [--json] [--socket PATH] [--config FILE]
  dcol config check [--config FILE] validate a configuration file
  dcol key generate --out FILE      write a member key (FILE, 0600) and FILE.pub
  dcol member show [--config FILE] [--json] [--within DIR]
                                    this router's key, certificate and collective key, checked
  dcol member key [--config FILE] [--within DIR]
                                    create the member key the configuration names (if none);
                                    prints the join request to send to the administrator
  dcol member install [--config FILE] [--within DIR] (--cert FILE [--collective PUB] | --rpc)
                                    check a certificate (and collective key) against this
                                    router's key, then install them where the configuration says;
                                    --rpc: {\"cert\": TEXT, \"collective\": TEXT} on stdin, JSON out;
                                    --within DIR (the web page: /etc/dcol): refuse paths outside DIR
  dcol collective init --out-dir DIR
                                    write DIR/collective.key (0600) and DIR/collective.pub
  dcol collective admit --collective-key KEY --member-pub PUB --name NAME
                        [--days N] [--roles client,waypoint] --out CERT
                                    PUB: the member's FILE.pub, or the join request it sent
                                    (which carries its WireGuard key too)
  dcol collective revoke --collective-key KEY (--member ID | --cert CERT) [--reason TEXT]
                         (--list FILE | --store DIR) [--directory URL]
                                    add a member to the root-signed revocation list FILE
                                    (or a directory store's DIR/revoked.list), and post
                                    the list to a running directory at URL
  dcol waypoint log [--dir DIR | --config FILE] [--member ID|NAME] [--since T] [--until T]
                    [--json] [--verify COLLECTIVE_PUB]
                                    the requests this waypoint granted (attribution evidence);
                                    T in Unix seconds
  dcol directory serve --collective-key KEY --store DIR [--listen ADDR:PORT]
                       [--snapshot-interval S] [--record-ttl S] [--renew]
  dcol directory snapshot --collective-key KEY --store DIR --out FILE
  dcol --version
  dcol <command> --help
";

const DEFAULT_CONFIG: &str = "/etc/config/dcol";
const DEFAULT_SOCKET: &str = "/var/run/dcol.sock";

/// A failure with its exit code.
struct Failure {
    code: u8,
    msg: String,
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        msg: format!("{}\n(see 'dcol --help')", msg.into()),
    }
}

fn runtime(msg: impl std::fmt::Display) -> Failure {
    Failure {
        code: 1,
        msg: msg.to_string(),
    }
}

impl From<lexopt::Error> for Failure {
    fn from(e: lexopt::Error) -> Self {
        usage(e.to_string())
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let _ = writeln!(std::io::stderr(), "dcol: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}

fn real_main() -> Result<(), Failure> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let cmd = match p.next()? {
        Some(Long("version")) | Some(Short('V')) => {
            println!("dcol {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Some(Long("help")) | Some(Short('h')) => {
            print!("{USAGE}");
            return Ok(());
        }
        Some(Value(v)) => string(v)?,
        Some(other) => return Err(usage(other.unexpected().to_string())),
        None => return Err(usage("missing command")),
    };
    match cmd.as_str() {
        "run" => cmd_run(&mut p),
        "status" => cmd_status(&mut p),
        "config" => match sub(&mut p, "config")?.as_str() {
            "check" => cmd_config_check(&mut p),
            s => Err(usage(format!("unknown command 'config {s}'"))),
        },
        "key" => match sub(&mut p, "key")?.as_str() {
            "generate" => cmd_key_generate(&mut p),
            s => Err(usage(format!("unknown command 'key {s}'"))),
        },
        "member" => match sub(&mut p, "member")?.as_str() {
            "show" => cmd_member_show(&mut p),
            "key" => cmd_member_key(&mut p),
            "install" => cmd_member_install(&mut p),
            s => Err(usage(format!("unknown command 'member {s}'"))),
        },
        "collective" => match sub(&mut p, "collective")?.as_str() {
            "init" => cmd_collective_init(&mut p),
            "admit" => cmd_collective_admit(&mut p),
            "revoke" => cmd_collective_revoke(&mut p),
            s => Err(usage(format!("unknown command 'collective {s}'"))),
        },
        "waypoint" => match sub(&mut p, "waypoint")?.as_str() {
            "log" => cmd_waypoint_log(&mut p),
            s => Err(usage(format!("unknown command 'waypoint {s}'"))),
        },
        "directory" => match sub(&mut p, "directory")?.as_str() {
            "serve" => cmd_directory_serve(&mut p),
            "snapshot" => cmd_directory_snapshot(&mut p),
            s => Err(usage(format!("unknown command 'directory {s}'"))),
        },
        s => Err(usage(format!("unknown command '{s}'"))),
    }
}

fn string(v: OsString) -> Result<String, Failure> {
    v.into_string()
        .map_err(|v| usage(format!("argument is not UTF-8: {v:?}")))
}

fn sub(p: &mut lexopt::Parser, what: &str) -> Result<String, Failure> {
    use lexopt::prelude::*;
    match p.next()? {
        Some(Value(v)) => string(v),
        Some(Long("help")) | Some(Short('h')) => {
            print!("{USAGE}");
            std::process::exit(0);
        }
        Some(other) => Err(usage(other.unexpected().to_string())),
        None => Err(usage(format!("'{what}' needs a subcommand"))),
    }
}

/// Parses `--name VALUE` style options; `flags` take no value.
struct Opts {
    values: Vec<(String, String)>,
    flags: Vec<String>,
}

impl Opts {
    fn parse(
        p: &mut lexopt::Parser,
        valued: &[&str],
        flags: &[&str],
        help: &str,
    ) -> Result<Opts, Failure> {
        use lexopt::prelude::*;
        let mut o = Opts {
            values: Vec::new(),
            flags: Vec::new(),
        };
        while let Some(arg) = p.next()? {
            match arg {
                Long("help") | Short('h') => {
                    print!("{help}");
                    std::process::exit(0);
                }
                Long(name) if valued.contains(&name) => {
                    let name = name.to_owned();
                    let v = string(p.value()?)?;
                    o.values.push((name, v));
                }
                Long(name) if flags.contains(&name) => o.flags.push(name.to_owned()),
                other => return Err(usage(other.unexpected().to_string())),
            }
        }
        Ok(o)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn need(&self, name: &str) -> Result<&str, Failure> {
        self.get(name)
            .ok_or_else(|| usage(format!("missing --{name}")))
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}

fn load_config(path: &str) -> Result<config::Config, Failure> {
    let cfg = config::load(std::path::Path::new(path)).map_err(|e| Failure {
        code: 2,
        msg: e.to_string(),
    })?;
    for w in &cfg.warnings {
        log::warn!("{w}");
    }
    Ok(cfg)
}

fn cmd_run(p: &mut lexopt::Parser) -> Result<(), Failure> {
    let o = Opts::parse(p, &["config"], &[], "usage: dcol run [--config FILE]\n")?;
    let path = o.get("config").unwrap_or(DEFAULT_CONFIG).to_owned();
    Logger::install(log::LevelFilter::Info);
    let cfg = load_config(&path)?;
    log::set_max_level(cfg.main.log_level);
    if !cfg.main.enabled {
        log::info!("{path}: option enabled is '0'; nothing to do");
        return Ok(());
    }
    let d = daemon::Daemon::start(&cfg, std::path::Path::new(&path)).map_err(|e| Failure {
        code: e.exit_code() as u8,
        msg: e.to_string(),
    })?;
    d.run().map_err(|e| Failure {
        code: e.exit_code() as u8,
        msg: e.to_string(),
    })
}

fn cmd_config_check(p: &mut lexopt::Parser) -> Result<(), Failure> {
    let o = Opts::parse(
        p,
        &["config"],
        &[],
        "usage: dcol config check [--config FILE]\n",
    )?;
    let path = o.get("config").unwrap_or(DEFAULT_CONFIG);
    let cfg = config::load(std::path::Path::new(path)).map_err(|e| Failure {
        code: 2,
        msg: e.to_string(),
    })?;
    for w in &cfg.warnings {
        eprintln!("warning: {w}");
    }
    println!("{path}: ok");
    Ok(())
}

fn cmd_status(p: &mut lexopt::Parser) -> Result<(), Failure> {
    let o = Opts::parse(
        p,
        &["socket", "config"],
        &["json"],
        "usage: dcol status [--json] [--socket PATH] [--config FILE]\n",
    )?;
    let socket = match (o.get("socket"), o.get("config")) {
        (Some(s), _) => PathBuf::from(s),
        (None, Some(c)) => load_config(c)?.main.control_socket,
        (None, None) => PathBuf::from(DEFAULT_SOCKET),
    };
    let (text, st) = control::query(&socket).map_err(runtime)?;
    if o.flag("json") {
        print!("{text}");
        return Ok(());
    }
    print_status(&st);
    print_loop(&st);
    Ok(())
}

/// The poll loop's slowest turn, for people.
fn print_loop(st: &control::Status) {
    if let Some(l) = &st.turns {
        println!(
            "loop: {} turns, slowest {:.3} ms ({}) at {} s",
            l.turns,
            l.max_ms,
            l.max_driver.as_deref().unwrap_or("-"),
            l.max_at_s
        );
    }
}

fn print_status(st: &control::Status) {
    println!(
        "dcol {} up {}s, member '{}' ({}), roles {}",
        st.version, st.uptime_s, st.member.name, st.member.id, st.member.roles
    );
    if let Some(c) = &st.client {
        print_client(c);
    }
    if let Some(w) = &st.waypoint {
        print_waypoint(w);
    }
    if let Some(d) = &st.directory {
        print_directory(d);
    }
}

/// The client part of `dcol status`: peers, the LAN proxy, connections.
fn print_client(c: &control::ClientStatus) {
    println!("client: {} connection(s)", c.connections.len());
    for p in &c.peers {
        let rtt = p
            .rtt_ms
            .map(|r| format!(" rtt {r:.1} ms"))
            .unwrap_or_default();
        println!(
            "  peer {} {} ({}) {}{rtt}",
            p.name,
            p.address,
            p.tunnel,
            if p.up { "up" } else { "down" }
        );
    }
    if let Some(lp) = &c.lan_proxy {
        let wan = if lp.wan_interfaces.is_empty() {
            "nothing (no default route)".to_owned()
        } else {
            format!("flows routed to {}", lp.wan_interfaces.join(", "))
        };
        println!(
            "  lan proxy: {} open (cap {}), {} accepted; intercepting {wan}{}",
            lp.counters.active,
            lp.max_conns,
            lp.counters.accepted,
            if lp.paused {
                "; interception paused (at the cap): new LAN connections go direct"
            } else {
                ""
            }
        );
    }
    print_connections(&c.connections);
}

/// Each connection and its subflows.
fn print_connections(connections: &[control::ConnectionStatus]) {
    for conn in connections {
        println!(
            "  {} {} -> {} {}",
            conn.token, conn.local, conn.remote, conn.state
        );
        for s in &conn.subflows {
            let via = s
                .waypoint
                .as_deref()
                .map(|w| format!(" via {w}"))
                .unwrap_or_default();
            let detail = s
                .detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            println!(
                "    {}{via} {} -> {} {}{detail}",
                s.path,
                s.local.as_deref().unwrap_or("-"),
                s.remote.as_deref().unwrap_or("-"),
                s.state
            );
        }
    }
}

/// The waypoint part of `dcol status`: grants, refusals, the donation.
fn print_waypoint(w: &control::WaypointStatus) {
    println!(
        "waypoint: {} grant(s), {} datagrams, {} granted",
        w.grants.len(),
        w.datagrams,
        w.granted
    );
    for g in &w.grants {
        println!(
            "  {} {}:{} -> {} age {}s expires in {}s",
            g.member, g.client, g.port, g.destination, g.age_s, g.expires_in_s
        );
    }
    for (why, n) in &w.refused {
        println!("  refused {why}: {n}");
    }
    if w.donate_kbit > 0 {
        println!("  donation cap: {} kbit/s", w.donate_kbit);
    }
    if w.donate_monthly_bytes > 0 {
        println!(
            "  donated this month: {} of {} bytes",
            w.donated_month_bytes, w.donate_monthly_bytes
        );
    }
    if let Some(why) = &w.refusing {
        println!("  refusing new detours: {why}");
    }
}

/// The directory part of `dcol status`.
fn print_directory(d: &control::DirectoryStatus) {
    let n = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    println!(
        "directory {}: serial {}, {} member(s), {} revoked, {} in use; last fetch: {}; record: {}",
        d.url,
        n(d.serial),
        n(d.members.map(|m| m as u64)),
        d.revoked,
        d.peers,
        d.last_result.as_deref().unwrap_or("-"),
        d.published.as_deref().unwrap_or("not published")
    );
    if let Some(r) = &d.renewal {
        println!("certificate renewal: {r}");
    }
}

fn cmd_key_generate(p: &mut lexopt::Parser) -> Result<(), Failure> {
    let o = Opts::parse(p, &["out"], &[], "usage: dcol key generate --out FILE\n")?;
    let out = PathBuf::from(o.need("out")?);
    let key = trust::files::generate_secret_key(&out).map_err(runtime)?;
    println!(
        "wrote {0}, {0}.pub and {0}.wgpub (member id {1})",
        out.display(),
        trust::MemberId::of(&key.public())
    );
    Ok(())
}

/// The membership file paths of the configuration, confined to `--within
/// DIR` when given (exit 2 when one is outside).
fn member_paths(o: &Opts) -> Result<member::Paths, Failure> {
    let paths = member::Paths::of(&load_config(o.get("config").unwrap_or(DEFAULT_CONFIG))?);
    if let Some(dir) = o.get("within") {
        paths
            .confine(std::path::Path::new(dir))
            .map_err(|e| Failure {
                code: 2,
                msg: e.to_string(),
            })?;
    }
    Ok(paths)
}

fn print_membership(m: &member::Membership, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(m).expect("serializing to a string cannot fail")
        );
        return;
    }
    let line = |what: &str, path: &str, present: bool, ok: String, err: &Option<String>| {
        let state = match (present, err) {
            (false, _) => "missing".to_owned(),
            (true, Some(e)) => format!("unusable: {e}"),
            (true, None) => ok,
        };
        println!("{what:<11} {path}: {state}");
    };
    line(
        "key",
        &m.key.path,
        m.key.present,
        format!("member {}", m.key.id.as_deref().unwrap_or("?")),
        &m.key.error,
    );
    line(
        "certificate",
        &m.cert.path,
        m.cert.present,
        format!(
            "'{}' ({}), valid until {}",
            m.cert.name.as_deref().unwrap_or("?"),
            m.cert.roles.as_deref().unwrap_or("?"),
            m.cert.not_after.unwrap_or(0)
        ),
        &m.cert.error,
    );
    line(
        "collective",
        &m.collective.path,
        m.collective.present,
        m.collective.id.clone().unwrap_or_default(),
        &m.collective.error,
    );
    println!(
        "{}",
        if m.ready {
            "ready"
        } else {
            "not ready: see 'dcol member key' and 'dcol member install'"
        }
    );
}

fn cmd_member_show(p: &mut lexopt::Parser) -> Result<(), Failure> {
    let o = Opts::parse(
        p,
        &["config", "within"],
        &["json"],
        "usage: dcol member show [--config FILE] [--json] [--within DIR]\n",
    )?;
    let m = member::show(&member_paths(&o)?, daemon::wall_ms() / 1000);
    print_membership(&m, o.flag("json"));
    Ok(())
}

fn cmd_member_key(p: &mut lexopt::Parser) -> Result<(), Failure> {
    let o = Opts::parse(
        p,
        &["config", "within"],
        &["json"],
        "usage: dcol member key [--config FILE] [--json] [--within DIR]\n",
    )?;
    let paths = member_paths(&o)?;
    let created = member::create_key(&paths).map_err(runtime)?;
    let m = member::show(&paths, daemon::wall_ms() / 1000);
    if o.flag("json") {
        print_membership(&m, true);
        return Ok(());
    }
    match (&m.key.request, &m.key.error) {
        (Some(r), _) => {
            let what = if created { "created" } else { "already there" };
            print!(
                "{} {what}; the join request to send to the collective's administrator:\n{r}",
                paths.key.display()
            );
            Ok(())
        }
        (None, e) => Err(runtime(e.clone().unwrap_or_else(|| "no key".into()))),
    }
}

fn cmd_member_install(p: &mut lexopt::Parser) -> Result<(), Failure> {
    let o = Opts::parse(
        p,
        &["config", "cert", "collective", "within"],
        &["rpc"],
        "usage: dcol member install [--config FILE] [--within DIR] (--cert FILE [--collective PUB] | --rpc)\n",
    )?;
    let read = |path: &str| -> Result<String, Failure> {
        let mut s = String::new();
        std::fs::File::open(path)
            .and_then(|f| {
                use std::io::Read;
                f.take(member::MAX_PASTE as u64 + 1).read_to_string(&mut s)
            })
            .map_err(|e| usage(format!("{path}: {e}")))?;
        Ok(s)
    };
    let now = daemon::wall_ms() / 1000;
    if o.flag("rpc") {
        // The LuCI page: ubus arguments on stdin, JSON out, also on errors.
        let answer = (|| -> Result<serde_json::Value, Failure> {
            let paths = member_paths(&o)?;
            let mut input = String::new();
            {
                use std::io::Read;
                std::io::stdin()
                    .take(4 * member::MAX_PASTE as u64)
                    .read_to_string(&mut input)
                    .map_err(|e| runtime(format!("reading the arguments: {e}")))?;
            }
            let args: serde_json::Value = serde_json::from_str(&input)
                .map_err(|e| runtime(format!("the arguments are not JSON: {e}")))?;
            let text = |k: &str| -> Result<Option<&str>, Failure> {
                match &args[k] {
                    serde_json::Value::Null => Ok(None),
                    serde_json::Value::String(s) => Ok(Some(s.as_str())),
                    _ => Err(runtime(format!("argument '{k}' is not a string"))),
                }
            };
            let cert = text("cert")?.ok_or_else(|| runtime("argument 'cert' missing"))?;
            let c = member::install(&paths, cert, text("collective")?, now).map_err(runtime)?;
            Ok(serde_json::json!({
                "installed": true, "name": c.name, "member_id": c.member.to_string(),
                "not_after": c.not_after,
                "membership": member::show(&paths, now),
            }))
        })();
        let (v, code) = match answer {
            Ok(v) => (v, 0),
            Err(e) => (serde_json::json!({ "error": e.msg }), 2),
        };
        println!("{v}");
        return if code == 0 {
            Ok(())
        } else {
            Err(Failure {
                code,
                msg: v["error"].as_str().unwrap_or_default().to_owned(),
            })
        };
    }
    let paths = member_paths(&o)?;
    let cert = read(o.need("cert")?)?;
    let coll = o.get("collective").map(read).transpose()?;
    let c = member::install(&paths, &cert, coll.as_deref(), now).map_err(|e| Failure {
        code: 2,
        msg: e.to_string(),
    })?;
    println!(
        "installed {} for '{}' ({}), valid until {} (reload dcol to use it)",
        paths.cert.display(),
        c.name,
        c.member,
        c.not_after
    );
    Ok(())
}

fn cmd_collective_init(p: &mut lexopt::Parser) -> Result<(), Failure> {
    let o = Opts::parse(
        p,
        &["out-dir"],
        &[],
        "usage: dcol collective init --out-dir DIR\n",
    )?;
    let dir = PathBuf::from(o.need("out-dir")?);
    trust::files::init_collective(&dir).map_err(runtime)?;
    println!(
        "wrote {0}/collective.key and {0}/collective.pub",
        dir.display()
    );
    Ok(())
}

fn cmd_collective_admit(p: &mut lexopt::Parser) -> Result<(), Failure> {
    let help = "usage: dcol collective admit --collective-key KEY --member-pub PUB --name NAME [--days N] [--roles client,waypoint] [--wg-pub KEY.wgpub] --out CERT\n";
    let o = Opts::parse(
        p,
        &[
            "collective-key",
            "member-pub",
            "name",
            "days",
            "roles",
            "wg-pub",
            "out",
        ],
        &[],
        help,
    )?;
    let days: u32 = match o.get("days") {
        None => 365,
        Some(d) => d
            .parse()
            .ok()
            .filter(|d| (1..=3650).contains(d))
            .ok_or_else(|| usage(format!("--days: expected 1-3650, got '{d}'")))?,
    };
    let roles: trust::Roles = o
        .get("roles")
        .unwrap_or("client,waypoint")
        .parse()
        .map_err(|e| usage(format!("--roles: {e}")))?;
    let now = daemon::wall_ms() / 1000;
    let cert = trust::files::admit(
        std::path::Path::new(o.need("collective-key")?),
        std::path::Path::new(o.need("member-pub")?),
        o.need("name")?,
        days,
        roles,
        o.get("wg-pub").map(std::path::Path::new),
        now,
    )
    .map_err(|e| Failure {
        code: 2,
        msg: e.to_string(),
    })?;
    let out = PathBuf::from(o.need("out")?);
    trust::files::write_certificate(&out, &cert).map_err(runtime)?;
    println!(
        "wrote {} for '{}' ({}), valid {days} days",
        out.display(),
        cert.name,
        cert.member
    );
    Ok(())
}

fn cmd_collective_revoke(p: &mut lexopt::Parser) -> Result<(), Failure> {
    use dcol::directory::agent;
    let help = "usage: dcol collective revoke --collective-key KEY (--member ID | --cert CERT) [--reason TEXT] (--list FILE | --store DIR) [--directory URL]\n\
        Adds the member to the collective's root-signed revocation list (serial + 1):\n\
        --list FILE   the list routers read (UCI 'option revocation_list'),\n\
        --store DIR   a directory store's DIR/revoked.list (a running server reads it within a second),\n\
        --directory   also posts the new list to a running `dcol directory serve` (its base URL).\n";
    let o = Opts::parse(
        p,
        &[
            "collective-key",
            "member",
            "cert",
            "reason",
            "list",
            "store",
            "directory",
        ],
        &[],
        help,
    )?;
    let cfgerr = |e: trust::files::FileError| Failure {
        code: 2,
        msg: e.to_string(),
    };
    let member: trust::MemberId = match (o.get("member"), o.get("cert")) {
        (Some(m), None) => m
            .parse()
            .map_err(|_| usage(format!("--member: expected 16 hex digits, got '{m}'")))?,
        (None, Some(c)) => {
            trust::files::read_certificate(std::path::Path::new(c))
                .map_err(cfgerr)?
                .member
        }
        _ => return Err(usage(format!("give one of --member and --cert\n{help}"))),
    };
    let list = match (o.get("list"), o.get("store")) {
        (Some(f), None) => PathBuf::from(f),
        (None, Some(d)) => std::path::Path::new(d).join(dcol::directory::store::REVOKED_LIST),
        _ => return Err(usage(format!("give one of --list and --store\n{help}"))),
    };
    let directory = o
        .get("directory")
        .map(|u| {
            dcol::http::Url::parse(u)
                .and_then(|b| b.join("/revocations"))
                .map_err(|e| usage(format!("--directory: {e}")))
        })
        .transpose()?;
    let l = trust::files::revoke(
        std::path::Path::new(o.need("collective-key")?),
        &list,
        member,
        o.get("reason").unwrap_or(""),
        daemon::wall_ms() / 1000,
    )
    .map_err(cfgerr)?;
    println!(
        "{}: member {member} revoked; serial {}, {} member(s) revoked in all",
        list.display(),
        l.serial,
        l.entries.len()
    );
    if let Some(url) = directory {
        let text = trust::files::revocations_text(&l);
        let reply = agent::post_record(&url, text.as_bytes(), agent::POST_TIMEOUT)
            .map_err(|e| runtime(format!("{url}: {e}")))?;
        println!("{url}: {}", reply.trim_end());
    }
    Ok(())
}

fn directory_options(o: &Opts) -> Result<dcol::directory::serve::ServeOptions, Failure> {
    let secs = |name: &str, default: u64| -> Result<std::time::Duration, Failure> {
        match o.get(name) {
            None => Ok(std::time::Duration::from_secs(default)),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|s| (1..=7 * 86_400).contains(s))
                .map(std::time::Duration::from_secs)
                .ok_or_else(|| usage(format!("--{name}: expected seconds 1-604800, got '{v}'"))),
        }
    };
    let listen = o.get("listen").unwrap_or("0.0.0.0:7450");
    let listen = listen
        .parse()
        .map_err(|_| usage(format!("--listen: expected ADDR:PORT, got '{listen}'")))?;
    let root = trust::files::read_secret_key(std::path::Path::new(o.need("collective-key")?))
        .map_err(|e| Failure {
            code: 2,
            msg: e.to_string(),
        })?;
    let mut opts =
        dcol::directory::serve::ServeOptions::new(listen, PathBuf::from(o.need("store")?), root);
    opts.snapshot_interval = secs("snapshot-interval", 10)?;
    opts.limits.record_ttl_s = secs("record-ttl", 3 * 3600)?.as_secs();
    Ok(opts)
}

fn cmd_directory_serve(p: &mut lexopt::Parser) -> Result<(), Failure> {
    let help = "usage: dcol directory serve --collective-key KEY --store DIR [--listen ADDR:PORT] [--snapshot-interval S] [--record-ttl S] [--renew]\n\
        Serves GET /snapshot (signed; also written to DIR/snapshot), POST /records, POST /revocations.\n\
        --renew: also POST /renew, which gives members whose certificate is valid, not revoked and in\n\
        the last third of its validity a new one (same name, keys, roles and lifetime, from now).\n\
        Defaults: --listen 0.0.0.0:7450, --snapshot-interval 10, --record-ttl 10800.\n";
    let o = Opts::parse(
        p,
        &[
            "collective-key",
            "store",
            "listen",
            "snapshot-interval",
            "record-ttl",
        ],
        &["renew"],
        help,
    )?;
    Logger::install(log::LevelFilter::Info);
    let mut opts = directory_options(&o)?;
    opts.renew = o.flag("renew");
    let server = dcol::directory::serve::Server::start(opts).map_err(runtime)?;
    server.wait();
    Ok(())
}

fn cmd_directory_snapshot(p: &mut lexopt::Parser) -> Result<(), Failure> {
    let help = "usage: dcol directory snapshot --collective-key KEY --store DIR --out FILE [--record-ttl S]\n\
        Signs a snapshot of the store (also saved as DIR/snapshot) for upload to a CDN or object store.\n";
    let o = Opts::parse(
        p,
        &["collective-key", "store", "out", "record-ttl"],
        &[],
        help,
    )?;
    Logger::install(log::LevelFilter::Warn);
    let out = PathBuf::from(o.need("out")?);
    let opts = directory_options(&o)?;
    let (bytes, serial, members) = dcol::directory::serve::snapshot_once(&opts).map_err(runtime)?;
    dcol::directory::store::write_atomic(&out, &bytes, 0o644)
        .map_err(|e| runtime(format!("{}: {e}", out.display())))?;
    println!(
        "wrote {} (serial {serial}, {members} member(s), {} bytes)",
        out.display(),
        bytes.len()
    );
    Ok(())
}

fn cmd_waypoint_log(p: &mut lexopt::Parser) -> Result<(), Failure> {
    use dcol::waypoint::evidence;
    let help = "usage: dcol waypoint log [--dir DIR | --config FILE] [--member ID|NAME] [--since UNIX_S] [--until UNIX_S] [--json] [--verify COLLECTIVE_PUB]\n";
    let o = Opts::parse(
        p,
        &["dir", "config", "member", "since", "until", "verify"],
        &["json"],
        help,
    )?;
    let time = |name: &str| -> Result<Option<u64>, Failure> {
        o.get(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| usage(format!("--{name}: expected Unix seconds, got '{v}'")))
            })
            .transpose()
    };
    let (since, until) = (time("since")?, time("until")?);
    let dir = match o.get("dir") {
        Some(d) => PathBuf::from(d),
        None => {
            let cfg = load_config(o.get("config").unwrap_or(DEFAULT_CONFIG))?;
            cfg.waypoint
                .evidence_dir
                .clone()
                .unwrap_or_else(|| cfg.main.state_dir.join("evidence"))
        }
    };
    let root = o
        .get("verify")
        .map(|f| {
            trust::files::read_public_key(std::path::Path::new(f)).map_err(|e| Failure {
                code: 2,
                msg: e.to_string(),
            })
        })
        .transpose()?;
    let (records, problems) = evidence::read_dir(&dir);
    for pr in &problems {
        eprintln!("warning: {pr}");
    }
    let (mut shown, mut failed) = (Vec::new(), 0usize);
    for r in &records {
        let s = r.at_ms / 1000;
        if since.is_some_and(|t| s < t) || until.is_some_and(|t| s > t) {
            continue;
        }
        if let Some(m) = o.get("member") {
            if m != r.member_id && m != r.member {
                continue;
            }
        }
        let record = evidence_json(r, root.as_ref());
        if record["verified"] == false {
            failed += 1;
        }
        shown.push(record);
    }
    if o.flag("json") {
        println!(
            "{}",
            serde_json::json!({ "records": shown, "problems": problems })
        );
    } else {
        for r in &shown {
            print_evidence(r);
        }
        eprintln!("{} record(s) from {}", shown.len(), dir.display());
    }
    if failed > 0 {
        return Err(Failure {
            code: 1,
            msg: format!("{failed} record(s) failed verification"),
        });
    }
    Ok(())
}

/// One evidence record as `dcol waypoint log --json` prints it; with
/// `root`, its signature checked.
fn evidence_json(
    r: &dcol::waypoint::evidence::Record,
    root: Option<&trust::PublicKey>,
) -> serde_json::Value {
    let s = r.at_ms / 1000;
    let req = r.decode_request();
    let asked = req.as_ref().map(|q| format!("{:?}", q.body.kind));
    let verified = match root {
        Some(k) if !r.request.is_empty() => {
            Some(r.verify(k).map(|_| ()).map_err(|e| e.to_string()))
        }
        _ => None,
    };
    serde_json::json!({
        "at_s": s, "from": r.from.to_string(), "member_id": r.member_id, "member": r.member,
        "grant": r.grant, "bytes": r.bytes, "request": asked,
        "verified": verified.as_ref().map(|v| v.is_ok()),
        "verify_error": verified.and_then(|v| v.err()),
    })
}

/// One evidence record as `dcol waypoint log` prints it.
fn print_evidence(r: &serde_json::Value) {
    println!(
        "{} {} {} ({}) {}{}{}",
        r["at_s"],
        r["from"].as_str().unwrap_or(""),
        r["member"].as_str().unwrap_or(""),
        r["member_id"].as_str().unwrap_or(""),
        r["grant"].as_str().unwrap_or(""),
        r["bytes"]
            .as_u64()
            .map(|b| format!(", {b} bytes"))
            .unwrap_or_default(),
        match r["verified"].as_bool() {
            Some(true) => "  [signature ok]".to_owned(),
            Some(false) => format!(
                "  [NOT VERIFIED: {}]",
                r["verify_error"].as_str().unwrap_or("")
            ),
            None => String::new(),
        }
    );
}

/// The logger: simplelog to stderr (procd forwards it to logd on OpenWrt,
/// which adds the time and the process name), one line per record:
/// `[INFO] message`. The level in force is `log::max_level()` (UCI
/// `log_level`, changed on reload); the logger itself passes everything but
/// the HTTP clients' per-request traces (`ureq`, and `attohttpc` under
/// `igd-next`): a failed exchange is logged by DCol with its URL and cause.
struct Logger;

impl Logger {
    fn install(level: log::LevelFilter) {
        let config = simplelog::ConfigBuilder::new()
            .set_time_level(log::LevelFilter::Off)
            .set_thread_level(log::LevelFilter::Off)
            .set_target_level(log::LevelFilter::Off)
            .set_location_level(log::LevelFilter::Off)
            .set_level_padding(simplelog::LevelPadding::Off)
            .add_filter_ignore_str("ureq")
            .add_filter_ignore_str("attohttpc")
            .build();
        let logger =
            simplelog::WriteLogger::new(log::LevelFilter::Trace, config, std::io::stderr());
        if log::set_boxed_logger(logger).is_ok() {
            log::set_max_level(level);
        }
    }
}
