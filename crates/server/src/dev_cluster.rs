//! A private PostgreSQL for `pacer dev` when no server answers: a throw-away cluster made with
//! the installed `initdb` and run with `pg_ctl`, listening on a Unix socket in its own
//! directory only (no TCP port, so it cannot disturb a server on the machine), and removed when
//! `pacer dev` exits, unless `--keep-data` names a directory to keep it in and reuse.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, bail};

/// What to install, said when no server answers and no server programs are found.
pub(crate) fn install_hint(url_host: &str) -> String {
    format!(
        "no PostgreSQL answers at {url_host}, and its server programs (initdb, pg_ctl) are not \
         installed, so `pacer dev` cannot start a private one. Either\n  \
         - install PostgreSQL: Debian/Ubuntu `sudo apt-get install postgresql`, macOS \
         `brew install postgresql@16`, then run `pacer dev` again (it starts a throw-away \
         cluster of its own), or\n  \
         - point `pacer dev --database-url postgres://user:password@host:port/pacer` at a \
         running server, or\n  \
         - start the Docker Compose stack's database (`docker compose up -d postgres`, see \
         docker-compose.yml) and run `pacer dev --database-url \
         postgres://pacer:<POSTGRES_PASSWORD>@127.0.0.1:5433/pacer`"
    )
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: on the `PATH`, else the newest
/// `/usr/lib/postgresql/<version>/bin`, else the Homebrew and Postgres.app locations.
pub(crate) fn find_server_programs() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    find_in(
        &on_path,
        Path::new("/usr/lib/postgresql"),
        &[
            "/opt/homebrew/bin",
            "/usr/local/bin",
            "/Applications/Postgres.app/Contents/Versions/latest/bin",
        ],
    )
}

fn find_in(on_path: &[PathBuf], versioned: &Path, known: &[&str]) -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|program| dir.join(program).is_file())
    };
    // A symlink on the PATH (Debian's /usr/local/bin/initdb) leads to the real directory, where
    // `postgres` is too.
    for dir in on_path {
        if let Ok(real) = std::fs::canonicalize(dir.join("initdb"))
            && let Some(real_dir) = real.parent()
            && complete(real_dir)
        {
            return Some(real_dir.to_owned());
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(versioned)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    known.iter().map(PathBuf::from).find(|dir| complete(dir))
}

/// Who runs the server programs: this user, or (as root, which `initdb` refuses) the `postgres`
/// system user through `runuser`.
#[derive(Debug, Clone)]
enum RunAs {
    Me,
    Postgres { uid: u32, gid: u32 },
}

fn id(args: &[&str]) -> Option<u32> {
    let output = std::process::Command::new("id").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

fn run_as() -> anyhow::Result<RunAs> {
    if id(&["-u"]) != Some(0) {
        return Ok(RunAs::Me);
    }
    let (Some(uid), Some(gid)) = (id(&["-u", "postgres"]), id(&["-g", "postgres"])) else {
        bail!(
            "`pacer dev` runs as root, and PostgreSQL's initdb refuses to: run it as another user, \
             or create a `postgres` system user (installing the postgresql package does)"
        );
    };
    if !Path::new("/usr/sbin/runuser").is_file() && !Path::new("/sbin/runuser").is_file() {
        bail!(
            "`pacer dev` runs as root, and PostgreSQL's initdb refuses to; `runuser` (util-linux) \
             is needed to run it as the `postgres` user: run `pacer dev` as another user instead"
        );
    }
    Ok(RunAs::Postgres { uid, gid })
}

/// A running private cluster; [`PrivateCluster::stop`] stops it and removes what is not kept.
pub(crate) struct PrivateCluster {
    bin: PathBuf,
    run_as: RunAs,
    /// The temporary directory: the socket, the log and (unless kept) the data.
    base: PathBuf,
    data: PathBuf,
    keep: bool,
    stopped: bool,
}

impl PrivateCluster {
    /// Makes (or, with `keep_data` holding one, reuses) a cluster and starts it.
    pub(crate) async fn start(bin: PathBuf, keep_data: Option<&Path>) -> anyhow::Result<Self> {
        let run_as = run_as()?;
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let base = std::env::temp_dir().join(format!(
            "pacer-dev-{}-{}",
            std::process::id(),
            &unique[unique.len() - 8..]
        ));
        std::fs::create_dir(&base).with_context(|| format!("cannot create {}", base.display()))?;
        let (data, keep) = match keep_data {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                (std::fs::canonicalize(dir)?, true)
            }
            None => (base.join("data"), false),
        };
        let mut cluster = Self {
            bin,
            run_as,
            base,
            data,
            keep,
            stopped: false,
        };
        if let RunAs::Postgres { .. } = cluster.run_as {
            tracing::info!(
                "running as root: the private PostgreSQL runs as the `postgres` user (runuser)"
            );
        }
        match cluster.init_and_start().await {
            Ok(()) => Ok(cluster),
            Err(error) => {
                cluster.stop();
                Err(error)
            }
        }
    }

    async fn init_and_start(&mut self) -> anyhow::Result<()> {
        if !self.keep {
            std::fs::create_dir(&self.data)?;
        }
        self.hand_over(&self.base.clone())?;
        self.hand_over(&self.data.clone())?;
        if self.data.join("PG_VERSION").is_file() {
            tracing::info!(data = %self.data.display(), "reusing the kept PostgreSQL data");
        } else {
            if std::fs::read_dir(&self.data)?.next().is_some() {
                bail!(
                    "--keep-data {}: the directory is neither empty nor a PostgreSQL data directory",
                    self.data.display()
                );
            }
            tracing::info!(data = %self.data.display(), "creating a private PostgreSQL cluster (initdb)");
            let data = self.data.display().to_string();
            self.run(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
            )
            .await?;
        }
        let data = self.data.display().to_string();
        let log = self.base.join("postgres.log").display().to_string();
        // No TCP at all (`-h ''`); the socket lives in this run's private directory.
        let options = format!(
            "-h '' -k '{}' -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.base.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start",
            ],
        )
        .await
        .with_context(|| format!("see the server log in {log}"))?;
        Ok(())
    }

    /// A connection URL for the database `name` on the private cluster's socket.
    pub(crate) fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@localhost/{name}?host={}",
            self.base.display()
        )
    }

    /// Where the socket, the log and (unless kept) the data are.
    pub(crate) fn directory(&self) -> &Path {
        &self.base
    }

    /// Gives `dir` to the `postgres` user when the cluster runs as it.
    fn hand_over(&self, dir: &Path) -> anyhow::Result<()> {
        if let RunAs::Postgres { uid, gid } = self.run_as {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .with_context(|| format!("cannot give {} to the postgres user", dir.display()))?;
            let mut parent = dir.parent();
            // The user must be able to reach the directory.
            while let Some(p) = parent {
                if let Ok(meta) = std::fs::metadata(p) {
                    use std::os::unix::fs::PermissionsExt;
                    if meta.permissions().mode() & 0o001 == 0 {
                        bail!(
                            "{} is not reachable by the postgres user ({} is closed to others); choose a directory under /tmp or /var/tmp",
                            dir.display(),
                            p.display()
                        );
                    }
                }
                parent = p.parent();
            }
        }
        Ok(())
    }

    fn command(&self, program: &str) -> tokio::process::Command {
        let path = self.bin.join(program);
        let mut command = match self.run_as {
            RunAs::Me => tokio::process::Command::new(path),
            RunAs::Postgres { .. } => {
                let mut command = tokio::process::Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(path);
                command
            }
        };
        command
            .current_dir(&self.base)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    async fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let output = self
            .command(program)
            .args(args)
            .output()
            .await
            .with_context(|| format!("cannot run {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        Ok(())
    }

    /// Stops the server (fast shutdown) and removes the temporary directory, and the data
    /// unless it is kept. Safe to call twice.
    pub(crate) fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if self.data.join("postmaster.pid").is_file() {
            let mut command = self.command("pg_ctl").into_std();
            let stopped = command
                .args(["-D"])
                .arg(&self.data)
                .args(["-m", "fast", "-w", "-t", "30", "stop"])
                .output();
            match stopped {
                Ok(output) if output.status.success() => {
                    tracing::info!("stopped the private PostgreSQL");
                }
                Ok(output) => tracing::warn!(
                    stderr = %String::from_utf8_lossy(&output.stderr).trim(),
                    "stopping the private PostgreSQL failed"
                ),
                Err(error) => {
                    tracing::warn!(%error, "cannot run pg_ctl to stop the private PostgreSQL")
                }
            }
        }
        match std::fs::remove_dir_all(&self.base) {
            Ok(()) => {
                tracing::info!(directory = %self.base.display(), "removed the private PostgreSQL's directory")
            }
            Err(error) => {
                tracing::warn!(%error, directory = %self.base.display(), "cannot remove the private PostgreSQL's directory")
            }
        }
        if self.keep {
            tracing::info!(data = %self.data.display(), "kept the private PostgreSQL's data (--keep-data)");
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The cluster as an exit hook: a second signal exits at once, and stops it first.
pub(crate) fn exit_hook(cluster: Arc<Mutex<PrivateCluster>>) -> Box<dyn Fn() + Send + Sync> {
    Box::new(move || {
        cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_hint_says_what_to_install_and_the_alternatives() {
        let hint = install_hint("127.0.0.1:5432");
        for expected in [
            "no PostgreSQL answers at 127.0.0.1:5432",
            "sudo apt-get install postgresql",
            "brew install postgresql@16",
            "pacer dev --database-url",
            "docker compose up -d postgres",
        ] {
            assert!(hint.contains(expected), "`{expected}` in {hint}");
        }
    }

    #[test]
    fn server_programs_are_found_on_the_path_else_the_newest_version_else_nowhere() {
        let root =
            std::env::temp_dir().join(format!("pacer-find-{}", uuid::Uuid::now_v7().simple()));
        let install = |dir: &Path| {
            std::fs::create_dir_all(dir).expect("dir");
            for program in ["initdb", "pg_ctl", "postgres"] {
                std::fs::write(dir.join(program), "").expect("file");
            }
        };
        let versioned = root.join("lib");
        let empty = root.join("empty");
        std::fs::create_dir_all(&empty).expect("dir");
        assert_eq!(
            find_in(std::slice::from_ref(&empty), &versioned, &[]),
            None,
            "none installed"
        );
        install(&versioned.join("14/bin"));
        install(&versioned.join("16/bin"));
        // A version without its server programs does not count.
        std::fs::create_dir_all(versioned.join("17/bin")).expect("dir");
        assert_eq!(
            find_in(std::slice::from_ref(&empty), &versioned, &[]),
            Some(versioned.join("16/bin"))
        );
        let on_path = root.join("path");
        install(&on_path);
        assert_eq!(
            find_in(&[empty, on_path.clone()], &versioned, &[]),
            Some(std::fs::canonicalize(&on_path).expect("exists"))
        );
        std::fs::remove_dir_all(&root).expect("cleaned up");
    }

    #[test]
    fn the_private_url_names_the_socket_directory() {
        let cluster = PrivateCluster {
            bin: PathBuf::new(),
            run_as: RunAs::Me,
            base: PathBuf::from("/tmp/pacer-dev-1-abc"),
            data: PathBuf::from("/tmp/pacer-dev-1-abc/data"),
            keep: false,
            // Nothing to stop or remove when dropped.
            stopped: true,
        };
        assert_eq!(
            cluster.url("pacer"),
            "postgres://postgres@localhost/pacer?host=/tmp/pacer-dev-1-abc"
        );
    }
}
