//! The architecture as a test: the workspace's dependency graph (from
//! `cargo metadata`) keeps the layers apart.
//!
//! A crate's layer is the folder it lives in: `platform/` (knows no
//! product), a product's folder (`marketplace/`, `blog/`), `tools/` (test
//! support, the load generator) or `ticketing/` (the binary). A product's
//! crates say what they are in `[package.metadata.architecture] role`:
//! `contract` (events, ids, catalogue, streams), `service`, `client` (pages
//! that speak the API over HTTP) or `assembly` (wiring a product's services
//! together). The rules:
//! - a platform crate depends on platform crates only;
//! - a product crate depends on the platform and on its own product, and on
//!   tools only for its tests; never on another product;
//! - a service depends on no other service, and nothing but an assembly (or
//!   the binary, or a tool) depends on a service;
//! - nothing depends on the binary;
//! - no service compiles the stream provisioning (`provision`: the
//!   JetStream API client and the nats-server harness are the operator's
//!   and the tests', not a service's), however indirectly;
//! - a product's crates do not reach another product's, however
//!   indirectly — also not through a tool their tests use;
//! - no platform crate's code names a product, but for the names on the
//!   wire and in stored data that predate the platform (`WIRE_NAMES`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Layer {
    Platform,
    Product(String),
    Tool,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Contract,
    Service,
    Client,
    Assembly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Dev,
    Build,
}

#[derive(Debug, Clone)]
struct Crate {
    name: String,
    layer: Layer,
    role: Option<Role>,
    /// Workspace crates it depends on, by name, with the kind of dependency.
    deps: Vec<(String, Kind)>,
}

/// The workspace's crates as `cargo metadata` describes them, or the
/// problems that keep them from having a place in the architecture.
fn workspace() -> Result<Vec<Crate>, Vec<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap();
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let dir_of = |manifest: &str| -> PathBuf {
        Path::new(manifest)
            .parent()
            .unwrap()
            .strip_prefix(&root)
            .unwrap()
            .to_owned()
    };
    let members: BTreeMap<PathBuf, String> = packages
        .iter()
        .map(|p| {
            (
                dir_of(p["manifest_path"].as_str().unwrap()),
                p["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut crates = Vec::new();
    let mut problems = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap().to_owned();
        let dir = dir_of(p["manifest_path"].as_str().unwrap());
        let top = dir.iter().next().unwrap().to_string_lossy().into_owned();
        let layer = match top.as_str() {
            "platform" => Layer::Platform,
            "marketplace" | "blog" => Layer::Product(top.clone()),
            "tools" => Layer::Tool,
            "ticketing" => Layer::Binary,
            other => {
                problems.push(format!(
                    "{name} lives in {other}/, which is no layer (platform/, marketplace/, blog/, tools/, ticketing/)"
                ));
                continue;
            }
        };
        let role = match p["metadata"]["architecture"]["role"].as_str() {
            None => None,
            Some("contract") => Some(Role::Contract),
            Some("service") => Some(Role::Service),
            Some("client") => Some(Role::Client),
            Some("assembly") => Some(Role::Assembly),
            Some(other) => {
                problems.push(format!("{name}: unknown role {other:?}"));
                None
            }
        };
        let deps = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| {
                let path = d["path"].as_str()?;
                let dir = Path::new(path).strip_prefix(&root).ok()?;
                let dep = members.get(dir)?.clone();
                let kind = match d["kind"].as_str() {
                    Some("dev") => Kind::Dev,
                    Some("build") => Kind::Build,
                    _ => Kind::Normal,
                };
                Some((dep, kind))
            })
            .filter(|(dep, _)| *dep != name)
            .collect();
        crates.push(Crate {
            name,
            layer,
            role,
            deps,
        });
    }
    if problems.is_empty() {
        Ok(crates)
    } else {
        Err(problems)
    }
}

/// Every way `crates` break the rules; empty when they keep them.
fn violations(crates: &[Crate]) -> Vec<String> {
    let by_name: BTreeMap<&str, &Crate> = crates.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut out = Vec::new();
    for c in crates {
        match (&c.layer, c.role) {
            (Layer::Product(product), None) => out.push(format!(
                "{} ({product}) declares no [package.metadata.architecture] role",
                c.name
            )),
            (Layer::Product(_), Some(_)) | (_, None) => {}
            (_, Some(_)) => out.push(format!("{}: only a product's crates have a role", c.name)),
        }
        for (dep_name, kind) in &c.deps {
            let Some(dep) = by_name.get(dep_name.as_str()) else {
                continue;
            };
            let edge = format!("{} → {}", c.name, dep.name);
            if dep.layer == Layer::Binary {
                out.push(format!("{edge}: nothing depends on the binary"));
                continue;
            }
            match &c.layer {
                Layer::Platform if dep.layer != Layer::Platform => out.push(format!(
                    "{edge}: a platform crate depends on platform crates only"
                )),
                Layer::Product(mine) => match &dep.layer {
                    Layer::Product(theirs) if theirs != mine => out.push(format!(
                        "{edge}: the {mine} depends on a crate of another product ({theirs})"
                    )),
                    Layer::Tool if *kind != Kind::Dev => {
                        out.push(format!("{edge}: a product uses tools only in its tests"))
                    }
                    _ => {}
                },
                _ => {}
            }
            if dep.role == Some(Role::Service) {
                let may = match c.layer {
                    Layer::Product(_) => c.role == Some(Role::Assembly),
                    Layer::Tool | Layer::Binary => true,
                    Layer::Platform => false,
                };
                if !may {
                    out.push(format!(
                        "{edge}: {} depends on a service; services learn of each other only through events, \
                         and only an assembly or the binary wires them",
                        c.name
                    ));
                }
            }
        }
    }
    for c in crates {
        let reached = reached_from(c, &by_name);
        if c.role == Some(Role::Service) {
            for tool in OPERATOR_ONLY {
                if let Some(path) = reached.normal.get(*tool) {
                    out.push(format!(
                        "{}: a service compiles {tool} ({path}); it is for operators and tests",
                        c.name
                    ));
                }
            }
        }
        if let Layer::Product(mine) = &c.layer {
            for (other, path) in &reached.any {
                if let Some(Layer::Product(theirs)) = by_name.get(other.as_str()).map(|d| &d.layer)
                    && theirs != mine
                {
                    out.push(format!(
                        "{}: the {mine} reaches a crate of the {theirs} ({path})",
                        c.name
                    ));
                }
            }
        }
    }
    out
}

/// Platform crates no service may compile, even indirectly.
const OPERATOR_ONLY: &[&str] = &["provision"];

/// What a crate compiles: through its normal dependencies (`normal`), and
/// through any of its own (tests included) then theirs (`any`); each with
/// the path that reaches it (`a → b → c`).
struct Reached {
    normal: BTreeMap<String, String>,
    any: BTreeMap<String, String>,
}

fn reached_from(c: &Crate, by_name: &BTreeMap<&str, &Crate>) -> Reached {
    let walk = |first: Vec<&(String, Kind)>| {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut queue: Vec<(String, String)> = first
            .into_iter()
            .map(|(d, _)| (d.clone(), format!("{} → {d}", c.name)))
            .collect();
        while let Some((name, path)) = queue.pop() {
            if name == c.name || seen.contains_key(&name) {
                continue;
            }
            if let Some(dep) = by_name.get(name.as_str()) {
                for (next, kind) in &dep.deps {
                    if *kind != Kind::Dev {
                        queue.push((next.clone(), format!("{path} → {next}")));
                    }
                }
            }
            seen.insert(name, path);
        }
        seen
    };
    Reached {
        normal: walk(c.deps.iter().filter(|(_, k)| *k != Kind::Dev).collect()),
        any: walk(c.deps.iter().collect()),
    }
}

/// Names that spell the product in the platform and stay, each for a
/// reason: message headers and the events' schema ids are in the messages
/// already stored and in the published event contract; the streams'
/// ownership mark is on the streams already provisioned (renaming any of
/// them needs a migration that reads both); the test variables are the
/// house's (CI sets `TICKETING_REQUIRE_ENGINES`).
const WIRE_NAMES: &[&str] = &[
    "\"Ticketing-",
    "urn:ticketing:event:",
    "managed by ticketing streams",
    "\"ticketing.owner\"",
    "\"ticketing.managed-by\"",
    "\"ticketing streams\"",
    "TICKETING_TEST_",
    "TICKETING_REQUIRE_ENGINES",
];

/// Every line of `text` (a file of the platform, `file`) that names one of
/// `products` (case-blind) other than through a [`WIRE_NAMES`] entry.
fn product_names(file: &str, text: &str, products: &[&str]) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let lower = line.to_lowercase();
            products.iter().any(|p| lower.contains(p))
                && !WIRE_NAMES.iter().any(|w| line.contains(w))
        })
        .map(|(i, line)| format!("{file}:{}: names a product: {}", i + 1, line.trim()))
        .collect()
}

#[test]
fn no_platform_crate_names_a_product() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crates = workspace().unwrap();
    // The products are the folders of the product layer, and the binary.
    let mut products: Vec<String> = crates
        .iter()
        .filter_map(|c| match &c.layer {
            Layer::Product(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    products.push("ticketing".into());
    products.sort();
    products.dedup();
    let products: Vec<&str> = products.iter().map(String::as_str).collect();
    let mut found = Vec::new();
    let mut read = 0;
    let mut dirs = vec![root.join("platform")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.to_string_lossy().into_owned();
            if path.is_dir() {
                // Code only: a crate's tests may use a product as data.
                if !name.ends_with("/tests") && !name.ends_with("/target") {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") {
                read += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                found.extend(product_names(&name, &text, &products));
            }
        }
    }
    assert!(read > 50, "read only {read} files of the platform");
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn a_platform_line_naming_a_product_is_reported_and_a_wire_name_is_not() {
    let text = "pub const EVENT_TYPE_HEADER: &str = \"Ticketing-Event\";\n\
                // the marketplace's auth service does this\n\
                fn blog_only() {}\n";
    let found = product_names("x.rs", text, &["marketplace", "blog", "ticketing"]);
    assert_eq!(
        found,
        [
            "x.rs:2: names a product: // the marketplace's auth service does this",
            "x.rs:3: names a product: fn blog_only() {}",
        ]
    );
}

#[test]
fn the_workspace_keeps_platform_products_tools_and_binary_apart() {
    let crates = workspace().unwrap_or_else(|problems| panic!("{}", problems.join("\n")));
    let layers: Vec<_> = crates.iter().map(|c| &c.layer).collect();
    assert!(layers.contains(&&Layer::Platform));
    assert!(layers.contains(&&Layer::Product("marketplace".into())));
    assert!(layers.contains(&&Layer::Product("blog".into())));
    assert!(layers.contains(&&Layer::Binary));
    let problems = violations(&crates);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn each_product_has_a_contract_crate_and_services() {
    let crates = workspace().unwrap();
    for product in ["marketplace", "blog"] {
        let of = |role| {
            crates
                .iter()
                .filter(|c| c.layer == Layer::Product(product.into()) && c.role == Some(role))
                .count()
        };
        // Its events' contract, and the marketplace its HTTP API's too.
        assert!(of(Role::Contract) >= 1, "{product}");
        assert!(of(Role::Service) >= 4, "{product}");
    }
}

// The rules catch what they are for: each planted violation is reported.

fn krate(name: &str, layer: Layer, role: Option<Role>, deps: &[(&str, Kind)]) -> Crate {
    Crate {
        name: name.into(),
        layer,
        role,
        deps: deps.iter().map(|(d, k)| ((*d).to_owned(), *k)).collect(),
    }
}

/// A small healthy workspace, with `extra` crates added.
fn planted(extra: Vec<Crate>) -> Vec<String> {
    let market = || Layer::Product("marketplace".into());
    let blog = || Layer::Product("blog".into());
    let mut crates = vec![
        krate("shared", Layer::Platform, None, &[]),
        krate("bus", Layer::Platform, None, &[("shared", Kind::Normal)]),
        krate(
            "events",
            market(),
            Some(Role::Contract),
            &[("shared", Kind::Normal)],
        ),
        krate(
            "orders",
            market(),
            Some(Role::Service),
            &[
                ("events", Kind::Normal),
                ("bus", Kind::Normal),
                ("testkit", Kind::Dev),
            ],
        ),
        krate(
            "tickets",
            market(),
            Some(Role::Service),
            &[("events", Kind::Normal)],
        ),
        krate(
            "web",
            market(),
            Some(Role::Client),
            &[("shared", Kind::Normal)],
        ),
        krate(
            "posts",
            blog(),
            Some(Role::Service),
            &[("bus", Kind::Normal)],
        ),
        krate(
            "blog",
            blog(),
            Some(Role::Assembly),
            &[("posts", Kind::Normal)],
        ),
        krate("testkit", Layer::Tool, None, &[("bus", Kind::Normal)]),
        krate("loadgen", Layer::Tool, None, &[("orders", Kind::Dev)]),
        krate(
            "ticketing",
            Layer::Binary,
            None,
            &[("orders", Kind::Normal), ("blog", Kind::Normal)],
        ),
    ];
    crates.extend(extra);
    violations(&crates)
}

fn assert_reported(problems: Vec<String>, needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a violation mentioning {needle:?}, got {problems:?}"
    );
}

#[test]
fn a_healthy_workspace_has_no_violations() {
    assert_eq!(planted(vec![]), Vec::<String>::new());
}

#[test]
fn a_service_depending_on_another_service_is_reported() {
    let market = Layer::Product("marketplace".into());
    let p = planted(vec![krate(
        "payments",
        market,
        Some(Role::Service),
        &[("orders", Kind::Normal)],
    )]);
    assert_reported(p, "payments → orders");
}

#[test]
fn a_service_reached_only_in_tests_is_still_reported() {
    let market = Layer::Product("marketplace".into());
    let p = planted(vec![krate(
        "payments",
        market,
        Some(Role::Service),
        &[("tickets", Kind::Dev)],
    )]);
    assert_reported(p, "payments → tickets");
}

#[test]
fn a_platform_crate_depending_on_a_product_is_reported() {
    let p = planted(vec![krate(
        "runtime",
        Layer::Platform,
        None,
        &[("events", Kind::Normal)],
    )]);
    assert_reported(p, "runtime → events: a platform crate");
}

#[test]
fn the_web_client_depending_on_a_service_is_reported() {
    let market = Layer::Product("marketplace".into());
    let p = planted(vec![krate(
        "web2",
        market,
        Some(Role::Client),
        &[("orders", Kind::Normal)],
    )]);
    assert_reported(p, "web2 → orders");
}

#[test]
fn a_blog_crate_depending_on_the_marketplace_is_reported() {
    let blog = Layer::Product("blog".into());
    let p = planted(vec![krate(
        "comments",
        blog,
        Some(Role::Service),
        &[("web", Kind::Normal)],
    )]);
    assert_reported(
        p,
        "comments → web: the blog depends on a crate of another product",
    );
}

#[test]
fn the_load_generator_depending_on_the_binary_is_reported() {
    let p = planted(vec![krate(
        "loadgen2",
        Layer::Tool,
        None,
        &[("ticketing", Kind::Dev)],
    )]);
    assert_reported(p, "loadgen2 → ticketing: nothing depends on the binary");
}

#[test]
fn a_product_crate_without_a_role_is_reported() {
    let market = Layer::Product("marketplace".into());
    let p = planted(vec![krate("reviews", market, None, &[])]);
    assert_reported(p, "reviews (marketplace) declares no");
}

#[test]
fn a_service_compiling_the_provisioning_through_its_contract_is_reported() {
    let market = || Layer::Product("marketplace".into());
    let p = planted(vec![
        krate("provision", Layer::Platform, None, &[("bus", Kind::Normal)]),
        krate(
            "events2",
            market(),
            Some(Role::Contract),
            &[("provision", Kind::Normal)],
        ),
        krate(
            "payments",
            market(),
            Some(Role::Service),
            &[("events2", Kind::Normal)],
        ),
    ]);
    assert_reported(
        p,
        "payments: a service compiles provision (payments → events2 → provision)",
    );
}

#[test]
fn a_service_using_the_provisioning_in_its_tests_only_is_not_reported() {
    let market = Layer::Product("marketplace".into());
    let p = planted(vec![
        krate("provision", Layer::Platform, None, &[("bus", Kind::Normal)]),
        krate(
            "payments",
            market,
            Some(Role::Service),
            &[("provision", Kind::Dev)],
        ),
    ]);
    assert_eq!(p, Vec::<String>::new());
}

#[test]
fn a_blog_crate_reaching_the_marketplace_through_a_test_tool_is_reported() {
    let blog = Layer::Product("blog".into());
    let p = planted(vec![
        krate("testkit2", Layer::Tool, None, &[("events", Kind::Normal)]),
        krate(
            "query",
            blog,
            Some(Role::Service),
            &[("testkit2", Kind::Dev)],
        ),
    ]);
    assert_reported(
        p,
        "query: the blog reaches a crate of the marketplace (query → testkit2 → events)",
    );
}
