//! The README's quick start, run as written: the shell block after `<!-- quickstart -->` is
//! extracted from README.md and run with `bash -e` in an empty directory, so a command that stops
//! working (or a step that stops exiting 0) fails this test instead of a newcomer.
//!
//! One substitution only, about the test's environment, not the commands: the release build is
//! replaced by the binary this test run built (`cargo build --release` is skipped and
//! `target/release` points at it). The block runs from a fresh git repository holding the
//! clone's `.gitignore`, with 127.0.0.1:8080 held by the test where it is free (the port a
//! newcomer most often has taken), and afterwards `git status --porcelain` must show nothing new.
//!
//! Also: the documentation's relative links resolve (README.md, ARCHITECTURE.md, CONTRIBUTING.md
//! and docs/*.md: each target file exists, each `#anchor` is a heading of its target), and the
//! README stays short and self-contained.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn quick_start() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let after = readme
        .split_once("<!-- quickstart -->")
        .expect("the README marks its quick start with <!-- quickstart -->")
        .1;
    let block = after
        .split_once("```sh\n")
        .expect("a ```sh block follows the marker")
        .1;
    block
        .split_once("\n```")
        .expect("the block is closed")
        .0
        .to_string()
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    let script = quick_start();
    assert!(script.contains("jobsync --once") && script.contains("jobsync import"));
    let bin = Path::new(env!("CARGO_BIN_EXE_jobsync"));
    let bin_dir = bin.parent().unwrap().to_str().unwrap();
    let script: String = script
        .lines()
        .filter(|line| !line.trim_start().starts_with("cargo build"))
        .map(|line| line.replace("$PWD/target/release", bin_dir))
        .collect::<Vec<_>>()
        .join("\n");
    // Whoever has 8080 (this test, or another program on the machine), the quick start must not
    // need it.
    let _port_8080 = std::net::TcpListener::bind("127.0.0.1:8080").ok();
    // The "clone": a git repository with the project's .gitignore, committed, so anything the
    // quick start leaves behind shows in `git status --porcelain`.
    let clone = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::copy(root().join(".gitignore"), clone.path().join(".gitignore")).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(clone.path())
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    git(&["init", "-q"]);
    git(&["add", ".gitignore"]);
    git(&["commit", "-qm", "clone"]);

    let mut cmd = Command::new("bash");
    cmd.arg("-e")
        .arg("-c")
        .arg(&script)
        .current_dir(clone.path());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("JOBSYNC_")) {
        cmd.env_remove(key);
    }
    // `mktemp -d` makes the scratch folder in here, removed with the test.
    cmd.env("TMPDIR", scratch.path())
        .env("JOBSYNC_SERVER__LISTEN", "")
        .env("JOBSYNC_LOG__FORMAT", "json");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A step that hangs (the simulator never listening) fails the test, bounded; the whole
    // process group goes, the simulator with it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            panic!("the quick start had not finished after 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the quick start failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("run #1 ok (full): pulled"), "{stdout}");
    assert!(stdout.contains("imported 1 row(s)"), "{stdout}");
    assert!(
        stdout.contains("pushed 1 ok, 0 failed"),
        "the second cycle pushed the create: {stdout}"
    );
    let done_row = stdout
        .lines()
        .find(|l| l.contains("quickstart-1"))
        .unwrap_or_else(|| panic!("outbox list shows the row: {stdout}"));
    assert!(done_row.contains("done"), "{done_row}");
    assert_eq!(
        git(&["status", "--porcelain", "--untracked-files=all"]),
        "",
        "the quick start left files in the clone"
    );
    assert!(
        std::fs::read_dir(scratch.path()).unwrap().next().is_some(),
        "the quick start worked in a scratch folder of its own"
    );
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files whose links are checked: the README, the root documents and docs/.
fn documents() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "CONTRIBUTING.md"]
        .iter()
        .map(|f| root().join(f))
        .collect();
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The lines of a Markdown file outside fenced code blocks.
fn prose(markdown: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    markdown.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The anchors GitHub gives a file's headings: lower case, spaces to `-`, every other character
/// that is not a letter, a digit, `-` or `_` dropped; a repeated anchor gets `-1`, `-2`, ….
fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    for line in prose(markdown) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let title = line[hashes..].trim().trim_end_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while !anchors.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
    }
    anchors
}

/// The targets of a file's inline links `[text](target)`, outside code blocks and code spans.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(markdown) {
        // Code spans are not links: drop every other backtick-delimited part.
        let text: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            targets.push(target.to_string());
            rest = &rest[end..];
        }
    }
    targets
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

#[test]
fn every_relative_link_of_the_documentation_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        for target in link_targets(&text) {
            if is_external(&target) {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let Ok(resolved) = resolved.canonicalize() else {
                broken.push(format!("{name}: {target}: no such file"));
                continue;
            };
            if !resolved.starts_with(root().canonicalize().unwrap()) {
                broken.push(format!("{name}: {target}: outside the repository"));
                continue;
            }
            if let Some(anchor) = anchor {
                let anchors = std::fs::read_to_string(&resolved)
                    .map(|t| heading_anchors(&t))
                    .unwrap_or_default();
                if !anchors.contains(anchor) {
                    broken.push(format!(
                        "{name}: {target}: no heading of {} has the anchor #{anchor}",
                        resolved.strip_prefix(root()).unwrap_or(&resolved).display()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} relative links found: is the parser right?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_short_and_stands_alone() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines; at most 300");
    let external: Vec<_> = link_targets(&readme)
        .into_iter()
        .filter(|t| is_external(t) || t.starts_with("../"))
        .collect();
    assert!(
        external.is_empty(),
        "the README links outside the repository: {external:?}"
    );
}

#[test]
fn anchors_follow_the_git_host_rules() {
    let anchors = heading_anchors(
        "# A `b` (c)\n## Writing to the outbox (CRM side)\n```\n# not a heading\n```\n## x_y-z\n## x_y-z\n",
    );
    let expected: BTreeSet<String> = [
        "a-b-c",
        "writing-to-the-outbox-crm-side",
        "x_y-z",
        "x_y-z-1",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(anchors, expected);
}
