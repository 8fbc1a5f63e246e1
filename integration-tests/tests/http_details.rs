//! HTTP details at the edges of the file mapping: the directory redirect
//! keeps the query, a malformed Host is refused, index names (default and
//! `--index`), media types of a few common extensions, hidden files
//! (`--hidden`), and a configuration that cannot serve (`--helpers 0` with
//! AMPED) is refused at startup.

use integration_tests::harness::{exchange, get, Server, TempDir};

const SPED: &[&str] = &["--arch", "sped"];
const AMPED: &[&str] = &["--arch", "amped"];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn directory_redirect_keeps_the_query() {
    let root = TempDir::new("details-redirect");
    root.write("dir/index.html", "index of dir\n");
    for args in [AMPED, SPED] {
        let server = Server::start(root.path(), args);
        let r = get(&server, "/dir?x=1");
        assert_eq!(r.status, 301, "{args:?}: GET /dir?x=1: {}", text(&r.body));
        assert_eq!(
            r.header("location"),
            Some("/dir/?x=1"),
            "{args:?}: the redirect to the directory must keep the query"
        );
        let r = get(&server, "/dir");
        assert_eq!(r.status, 301, "{args:?}: GET /dir");
        assert_eq!(r.header("location"), Some("/dir/"), "{args:?}: GET /dir");
    }
}

#[test]
fn a_host_header_that_is_no_host_gets_400() {
    let root = TempDir::new("details-host");
    root.write("index.html", "home\n");
    let server = Server::start(root.path(), &[]);
    for host in ["a b/../", "a b", "a/b", "../x"] {
        let r = exchange(
            &server,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 400, "Host: {host:?}: {}", text(&r.body));
    }
    // The well-formed ones still work.
    for host in ["t", "example.com:8080", "127.0.0.1", "[::1]:80"] {
        let r = exchange(
            &server,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "Host: {host:?}: {}", text(&r.body));
    }
}

#[test]
fn index_htm_is_a_default_index_name() {
    let root = TempDir::new("details-index-htm");
    root.write("old/index.htm", "an old site\n");
    root.write("both/index.html", "html wins\n");
    root.write("both/index.htm", "htm loses\n");
    for args in [AMPED, SPED] {
        let server = Server::start(root.path(), args);
        let r = get(&server, "/old/");
        assert_eq!(
            (r.status, text(&r.body).as_str()),
            (200, "an old site\n"),
            "{args:?}: a directory with only index.htm serves it"
        );
        let r = get(&server, "/both/");
        assert_eq!(
            (r.status, text(&r.body).as_str()),
            (200, "html wins\n"),
            "{args:?}: index.html comes before index.htm"
        );
    }
}

#[test]
fn index_flag_sets_the_index_name() {
    let root = TempDir::new("details-index-flag");
    root.write("index.html", "not the index now\n");
    root.write("home.html", "home page\n");
    for arch in ["amped", "sped"] {
        let server = Server::start(root.path(), &["--arch", arch, "--index", "home.html"]);
        let r = get(&server, "/");
        assert_eq!(
            (r.status, text(&r.body).as_str()),
            (200, "home page\n"),
            "--arch {arch} --index home.html: GET /"
        );
    }
}

#[test]
fn media_types_of_xhtml_yaml_and_mjs() {
    let root = TempDir::new("details-types");
    root.write(
        "page.xhtml",
        "<html xmlns=\"http://www.w3.org/1999/xhtml\"/>\n",
    );
    root.write("conf.yaml", "a: 1\n");
    root.write("mod.mjs", "export const a = 1;\n");
    let server = Server::start(root.path(), &[]);
    let content_type = |path: &str| {
        let r = get(&server, path);
        assert_eq!(r.status, 200, "GET {path}");
        r.header("content-type").unwrap_or_default().to_string()
    };
    assert_eq!(content_type("/page.xhtml"), "application/xhtml+xml");
    let yaml = content_type("/conf.yaml");
    assert!(
        [
            "application/yaml",
            "text/yaml",
            "application/x-yaml",
            "text/x-yaml"
        ]
        .iter()
        .any(|t| yaml == *t || yaml.starts_with(&format!("{t};"))),
        "a .yaml file must be served as YAML, got {yaml:?}"
    );
    assert_eq!(content_type("/mod.mjs"), "text/javascript; charset=utf-8");
}

fn hidden_tree() -> TempDir {
    let root = TempDir::new("details-hidden");
    root.write(".git/config", "[core]\n");
    root.write(".env", "SECRET=1\n");
    root.write(
        ".well-known/security.txt",
        "Contact: mailto:a@example.com\n",
    );
    root.write("a/.hidden", "hidden\n");
    root.write("a/visible.txt", "visible\n");
    root
}

#[test]
fn hidden_files_are_404_except_well_known() {
    let root = hidden_tree();
    for args in [AMPED, SPED] {
        let server = Server::start(root.path(), args);
        for path in ["/.git/config", "/.env", "/a/.hidden", "/.git/", "/.git"] {
            let r = get(&server, path);
            assert_eq!(r.status, 404, "{args:?}: GET {path}: {}", text(&r.body));
        }
        for (path, body) in [
            (
                "/.well-known/security.txt",
                "Contact: mailto:a@example.com\n",
            ),
            ("/a/visible.txt", "visible\n"),
        ] {
            let r = get(&server, path);
            assert_eq!(
                (r.status, text(&r.body).as_str()),
                (200, body),
                "{args:?}: GET {path}"
            );
        }
    }
}

#[test]
fn hidden_allow_serves_dot_files() {
    let root = hidden_tree();
    let server = Server::start(root.path(), &["--hidden", "allow"]);
    for (path, body) in [
        ("/.env", "SECRET=1\n"),
        ("/.git/config", "[core]\n"),
        ("/a/.hidden", "hidden\n"),
    ] {
        let r = get(&server, path);
        assert_eq!(
            (r.status, text(&r.body).as_str()),
            (200, body),
            "--hidden allow: GET {path}"
        );
    }
}

#[test]
fn amped_with_zero_helpers_is_refused_at_startup() {
    let root = TempDir::new("details-zero-helpers");
    root.write("index.html", "home\n");
    let err = match Server::start_with(Some(root.path()), &["--arch", "amped", "--helpers", "0"]) {
        Ok(_) => {
            panic!("--arch amped --helpers 0 cannot serve a file: the server must refuse to start")
        }
        Err(err) => err,
    };
    assert!(
        err.to_ascii_lowercase().contains("helper"),
        "the refusal must say it is about the helpers: {err}"
    );
}
