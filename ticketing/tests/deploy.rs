//! The deployment files, checked as far as this machine allows (no Docker
//! engine, no cluster): the Helm chart rendered by a real `helm template`
//! and its objects checked; the docker-compose file and the Dockerfile read
//! and checked for what the microservices mode needs. CI also lints the
//! chart, validates the rendered objects against the Kubernetes schemas,
//! lints the Dockerfile and validates the compose file (`deploy/check`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use provision::Spec;
use serde_json::Value;

const SERVICES: [&str; 5] = ["auth", "tickets", "orders", "expiration", "payments"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

/// `helm` from `TICKETING_TEST_HELM` or the PATH, or `None` (after saying
/// why) when it is missing and engines are optional.
fn helm() -> Option<String> {
    let helm = std::env::var("TICKETING_TEST_HELM").unwrap_or_else(|_| "helm".into());
    match std::process::Command::new(&helm).arg("version").output() {
        Ok(out) if out.status.success() => Some(helm),
        _ if store::testing::engines_required() => {
            panic!(
                "helm ({helm}) is required (TICKETING_REQUIRE_ENGINES=1); deploy/check installs it"
            )
        }
        _ => {
            store::testing::skipped(&format!(
                "helm ({helm}) is not installed; set TICKETING_TEST_HELM or run deploy/check"
            ));
            None
        }
    }
}

/// `helm template` of the chart with `args`: Ok(objects) or Err(stderr).
fn render(helm: &str, args: &[&str]) -> Result<Vec<Value>, String> {
    let out = std::process::Command::new(helm)
        .args(["template", "t"])
        .arg(root().join("deploy/helm/ticketing"))
        .args(["--kube-version", "1.30.0"])
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn count(objects: &[Value], kind: &str) -> usize {
    objects.iter().filter(|o| o["kind"] == kind).count()
}

fn env_of(objects: &[Value], service: &str) -> BTreeMap<String, String> {
    env(
        &find(objects, "Deployment", &format!("t-ticketing-{service}"))["spec"]["template"]["spec"]
            ["containers"][0],
    )
}

/// A container's environment: name → value, or `secret:<name>/<key>`, or
/// `field:<path>`.
fn env(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else if let Some(s) = e["valueFrom"]["secretKeyRef"].as_object() {
                format!(
                    "secret:{}/{}",
                    s["name"].as_str().unwrap(),
                    s["key"].as_str().unwrap()
                )
            } else {
                format!(
                    "field:{}",
                    e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap()
                )
            };
            (name, value)
        })
        .collect()
}

fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

const KEY: &str = "--set=secrets.jwtKey=0123456789abcdef-test";

#[test]
fn the_chart_deploys_each_service_with_probes_secrets_and_its_own_database() {
    let Some(helm) = helm() else { return };
    let objects = render(&helm, &[KEY]).unwrap();
    assert_eq!(
        count(&objects, "Deployment"),
        6,
        "five services and the web client"
    );
    assert_eq!(count(&objects, "Service"), 6);
    let secret = find(&objects, "Secret", "t-ticketing-secrets");
    assert_eq!(secret["stringData"]["JWT_KEY"], "0123456789abcdef-test");
    for service in SERVICES {
        let name = format!("t-ticketing-{service}");
        let d = find(&objects, "Deployment", &name);
        let pod = &d["spec"]["template"];
        let c = &pod["spec"]["containers"][0];
        assert_eq!(args(c), ["run"], "{service}");
        let env = env(c);
        assert_eq!(env["TICKETING_SERVICES"], service);
        assert_eq!(
            env["HOSTNAME"], "field:metadata.name",
            "NATS connection named after the pod"
        );
        assert_eq!(env["NATS_URL"], "nats://nats:4222");
        assert_eq!(
            env["DATABASE_URL"],
            format!("postgres://ticketing@postgres:5432/ticketing_{service}")
        );
        assert_eq!(env["JWT_KEY"], "secret:t-ticketing-secrets/JWT_KEY");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
        assert_eq!(c["ports"][0]["name"], "http");
        // Metrics on an internal port of their own, where the scraper looks.
        assert_eq!(c["ports"][1]["name"], "metrics");
        assert_eq!(c["ports"][1]["containerPort"], 9100);
        assert_eq!(env["METRICS_ADDR"], "0.0.0.0:9100");
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "9100");
        assert!(c["resources"]["limits"]["memory"].is_string(), "{service}");
        assert!(c["resources"]["requests"]["cpu"].is_string(), "{service}");
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        // The Service reaches exactly these pods.
        let svc = find(&objects, "Service", &name);
        let selector = svc["spec"]["selector"].as_object().unwrap();
        let labels = pod["metadata"]["labels"].as_object().unwrap();
        for (k, v) in selector {
            assert_eq!(labels.get(k), Some(v), "{service}: selector {k}");
        }
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            svc["spec"]["selector"]
        );
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
        if service == "payments" {
            assert_eq!(
                env["STRIPE_SECRET_KEY"],
                "secret:t-ticketing-secrets/STRIPE_SECRET_KEY"
            );
        } else {
            assert!(!env.contains_key("STRIPE_SECRET_KEY"), "{service}");
        }
        if service == "orders" {
            assert_eq!(env["ORDER_EXPIRATION_SECONDS"], "900");
        }
    }
    assert_eq!(
        find(&objects, "Deployment", "t-ticketing-expiration")["spec"]["replicas"],
        1
    );
    // The web client: the services' API through their Services, no
    // database, no NATS, no secrets.
    let web = find(&objects, "Deployment", "t-ticketing-web");
    let c = &web["spec"]["template"]["spec"]["containers"][0];
    let env = env(c);
    assert_eq!(env["TICKETING_SERVICES"], "web");
    for service in ["auth", "tickets", "orders", "payments"] {
        let url = &env[&format!("{}_URL", service.to_uppercase())];
        assert_eq!(*url, format!("http://t-ticketing-{service}:3000"));
        find(&objects, "Service", &format!("t-ticketing-{service}"));
    }
    for absent in ["DATABASE_URL", "NATS_URL", "JWT_KEY", "STRIPE_SECRET_KEY"] {
        assert!(!env.contains_key(absent), "web gets no {absent}");
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let auth = env_of(&objects, "auth");
    assert_eq!(
        auth["TRUST_FORWARDED_FOR"], "false",
        "no proxy is trusted until the operator names them"
    );
    assert!(!auth.contains_key("TRUSTED_PROXIES"));
    let trusting = render(
        &helm,
        &[
            KEY,
            "--set",
            "trustForwardedFor=true,trustedProxies=10.244.0.0/16",
        ],
    )
    .unwrap();
    let auth = env_of(&trusting, "auth");
    assert_eq!(auth["TRUST_FORWARDED_FOR"], "true");
    assert_eq!(auth["TRUSTED_PROXIES"], "10.244.0.0/16");
    let missing = render(&helm, &[KEY, "--set", "trustForwardedFor=true"]).unwrap_err();
    assert!(
        missing.contains("trustForwardedFor needs trustedProxies"),
        "{missing}"
    );
    assert_eq!(
        find(&objects, "Deployment", "t-ticketing-orders")["spec"]["replicas"],
        2
    );
}

#[test]
fn the_ingress_routes_the_designs_paths_to_the_services() {
    let Some(helm) = helm() else { return };
    let objects = render(&helm, &[KEY, "--set=ingress.className=nginx"]).unwrap();
    let ingress = find(&objects, "Ingress", "t-ticketing");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    let paths: BTreeMap<String, String> = ingress["spec"]["rules"][0]["http"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["pathType"], "Prefix");
            assert_eq!(p["backend"]["service"]["port"]["name"], "http");
            (
                p["path"].as_str().unwrap().to_owned(),
                p["backend"]["service"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // The marketplace's prefix table, which the gateway and the web client
    // route by, and the pages for the rest.
    let expected: BTreeMap<String, String> = marketplace_events::API_ROUTES
        .iter()
        .copied()
        .chain([("/", "web")])
        .map(|(p, s)| (p.to_owned(), format!("t-ticketing-{s}")))
        .collect();
    assert_eq!(paths, expected);
    for backend in paths.values() {
        find(&objects, "Service", backend);
    }
}

#[test]
fn provisioning_runs_as_a_pre_install_and_pre_upgrade_hook() {
    let Some(helm) = helm() else { return };
    let objects = render(&helm, &[KEY]).unwrap();
    let job = find(&objects, "Job", "t-ticketing-streams");
    let annotations = &job["metadata"]["annotations"];
    assert_eq!(annotations["helm.sh/hook"], "pre-install,pre-upgrade");
    let delete = annotations["helm.sh/hook-delete-policy"].as_str().unwrap();
    assert!(
        delete.contains("before-hook-creation") && delete.contains("hook-succeeded"),
        "{delete}"
    );
    assert_eq!(job["spec"]["backoffLimit"], 3);
    assert!(job["spec"]["activeDeadlineSeconds"].as_u64().unwrap() > 0);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let c = &pod["containers"][0];
    assert_eq!(
        args(c),
        ["streams", "apply", "--wait", "120s", "--replicas", "1"]
    );
    assert_eq!(env(c)["NATS_URL"], "nats://nats:4222");
    assert_eq!(
        count(&objects, "ConfigMap"),
        0,
        "the image's built-in spec by default"
    );

    // A spec of one's own, flags for a cluster and for destructive changes.
    let objects = render(
        &helm,
        &[
            KEY,
            "--set-file",
            &format!(
                "streams.spec={}",
                root().join("deploy/streams.yaml").display()
            ),
            "--set=streams.replicas=3,streams.prune=true,streams.allowRecreate=true",
        ],
    )
    .unwrap();
    let job = find(&objects, "Job", "t-ticketing-streams");
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        args(c),
        [
            "streams",
            "apply",
            "--wait",
            "120s",
            "--replicas",
            "3",
            "--prune",
            "--allow-recreate",
            "--file",
            "/etc/ticketing/streams.yaml"
        ]
    );
    let cm = find(&objects, "ConfigMap", "t-ticketing-streams-spec");
    assert_eq!(
        cm["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );
    let weight: i64 = cm["metadata"]["annotations"]["helm.sh/hook-weight"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(weight < 0, "the spec exists before the job runs");
    let spec = Spec::parse(cm["data"]["streams.yaml"].as_str().unwrap(), "configmap").unwrap();
    assert_eq!(
        spec.streams.len(),
        provision::Spec::built_in(&marketplace_events::STREAMS)
            .streams
            .len()
    );
}

#[test]
fn secrets_and_database_urls_can_come_from_secrets_of_ones_own() {
    let Some(helm) = helm() else { return };
    let missing = render(&helm, &[]).unwrap_err();
    assert!(missing.contains("secrets.jwtKey is required"), "{missing}");
    let short = render(&helm, &["--set=secrets.jwtKey=short"]).unwrap_err();
    assert!(short.contains("at least 16 characters"), "{short}");

    let objects = render(
        &helm,
        &[
            "--set=secrets.existingSecret=mine,database.existingSecret=dbs",
            "--set=services.orders.databaseUrl=postgres://o@pg/orders",
        ],
    )
    .unwrap();
    assert_eq!(count(&objects, "Secret"), 0);
    let tickets = env(
        &find(&objects, "Deployment", "t-ticketing-tickets")["spec"]["template"]["spec"]["containers"]
            [0],
    );
    assert_eq!(tickets["JWT_KEY"], "secret:mine/JWT_KEY");
    assert_eq!(tickets["DATABASE_URL"], "secret:dbs/tickets");
    let orders = env(
        &find(&objects, "Deployment", "t-ticketing-orders")["spec"]["template"]["spec"]["containers"]
            [0],
    );
    assert_eq!(orders["DATABASE_URL"], "postgres://o@pg/orders");
}

#[test]
fn trace_export_is_off_by_default_and_one_value_turns_it_on_everywhere() {
    let Some(helm) = helm() else { return };
    let off = render(&helm, &[KEY]).unwrap();
    let on = render(&helm, &[KEY, "--set=otlpEndpoint=http://collector:4318"]).unwrap();
    for service in SERVICES.iter().chain(["web"].iter()) {
        let name = format!("t-ticketing-{service}");
        let container = |objects: &[Value]| {
            env(&find(objects, "Deployment", &name)["spec"]["template"]["spec"]["containers"][0])
        };
        assert!(
            !container(&off).contains_key("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{service}"
        );
        assert_eq!(
            container(&on)["OTEL_EXPORTER_OTLP_ENDPOINT"],
            "http://collector:4318",
            "{service}"
        );
    }
}

#[test]
fn compose_runs_the_provisioning_job_before_the_services() {
    let compose: Value = serde_saphyr::from_str(&read("deploy/docker-compose.yaml")).unwrap();
    let services = compose["services"].as_object().unwrap();
    let streams = &services["streams"];
    let command: Vec<&str> = streams["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(&command[..2], ["streams", "apply"]);
    assert_eq!(
        streams["depends_on"]["nats"]["condition"],
        "service_healthy"
    );
    assert_eq!(streams["environment"]["NATS_URL"], "nats://nats:4222");
    let init = read("deploy/compose/init-databases.sql");
    for service in SERVICES {
        let s = &services[service];
        assert_eq!(
            s["depends_on"]["streams"]["condition"], "service_completed_successfully",
            "{service} starts after provisioning"
        );
        assert_eq!(s["environment"]["TICKETING_SERVICES"], service);
        assert_eq!(s["environment"]["NATS_URL"], "nats://nats:4222");
        let db = format!("ticketing_{service}");
        assert!(
            s["environment"]["DATABASE_URL"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{db}")),
            "{service}"
        );
        assert!(init.contains(&format!("CREATE DATABASE {db};")), "{db}");
        assert!(
            s["healthcheck"]["test"].to_string().contains("/readyz"),
            "{service}"
        );
    }
    // Auth believes X-Forwarded-For from the gateway and the web client
    // alone: their fixed addresses, nothing wider.
    let proxies: Vec<&str> = services["auth"]["environment"]["TRUSTED_PROXIES"]
        .as_str()
        .unwrap()
        .split(',')
        .collect();
    let mut fixed: Vec<&str> = ["gateway", "web"]
        .iter()
        .map(|s| {
            services[*s]["networks"]["default"]["ipv4_address"]
                .as_str()
                .unwrap()
        })
        .collect();
    fixed.sort();
    let mut sorted = proxies.clone();
    sorted.sort();
    assert_eq!(sorted, fixed);
    let web = &services["web"]["environment"];
    assert_eq!(web["TICKETING_SERVICES"], "web");
    assert_eq!(web["AUTH_URL"], "http://auth:3000");
    let gateway = &services["gateway"]["environment"];
    assert_eq!(gateway["WEB_URL"], "http://web:3000");
    for (var, service) in [
        ("AUTH_URL", "auth"),
        ("TICKETS_URL", "tickets"),
        ("ORDERS_URL", "orders"),
        ("PAYMENTS_URL", "payments"),
    ] {
        assert_eq!(gateway[var], format!("http://{service}:3000"));
    }
}

#[test]
fn the_image_is_multi_stage_non_root_and_carries_the_spec() {
    let dockerfile = read("Dockerfile");
    let stages = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "a build stage and a small runtime stage");
    let stage = |from: &str| {
        dockerfile
            .split("\nFROM ")
            .find(|s| s.starts_with(from))
            .unwrap_or_else(|| panic!("no stage FROM {from}"))
    };
    let runtime = stage("${RUNTIME_IMAGE} AS runtime\n");
    assert!(runtime.contains("USER 65532"), "runs as non-root");
    assert!(runtime.contains("ENTRYPOINT [\"/usr/local/bin/ticketing\"]"));
    assert!(
        runtime.contains("probe"),
        "a health check that needs no shell"
    );
    // What users build and what CI builds (a binary built beforehand) are
    // the same runtime stage with the binary in the same place.
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        last_stage.starts_with("runtime\n"),
        "the image is the runtime stage"
    );
    assert!(
        last_stage.contains("COPY --from=build /usr/local/bin/ticketing /usr/local/bin/ticketing")
    );
    assert!(
        stage("runtime AS prebuilt\n")
            .contains("COPY target/docker/ticketing /usr/local/bin/ticketing")
    );
    assert!(
        read(".dockerignore").contains("!target/docker"),
        "the prebuilt binary is in the build context"
    );
    // The build stage has every workspace member and the specs the binary
    // embeds (include_str!).
    let manifest = read("Cargo.toml");
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("workspace members");
    for member in members.split(',').map(|m| m.trim().trim_matches('"')) {
        let dir = member.trim_end_matches("/*");
        assert!(
            dockerfile.contains(&format!("COPY {dir} ./{dir}\n")),
            "the image does not copy the workspace members in {dir}/"
        );
    }
    for spec in ["deploy/streams.yaml", "deploy/blog-streams.yaml"] {
        assert!(
            dockerfile.contains(&format!("COPY {spec} ./{spec}\n")),
            "{spec}"
        );
    }
    assert!(dockerfile.contains("--locked"), "built from Cargo.lock");
}

/// The Grafana dashboard is valid JSON and charts only series the code
/// exports (the list `/metrics` is tested for in tests/openapi.rs and
/// tests/microservices.rs).
#[test]
fn the_dashboard_charts_only_series_that_exist() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/ticketing.json")).unwrap();
    let known = [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "events_published_total",
        "events_handled_total",
        "events_failed_total",
        "outbox_pending",
        "outbox_oldest_age_seconds",
        "consumer_pending",
        "consumer_ack_pending",
        "bus_parked_total",
        "expiration_timers_pending",
        "expiration_lateness_seconds_bucket",
        "db_transactions_in_flight",
        "db_connections",
    ];
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut charted = std::collections::BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let metric = token.ends_with("_total")
                    || token.ends_with("_bucket")
                    || token.starts_with("outbox_")
                    || token.starts_with("consumer_")
                    || token.starts_with("db_")
                    || token.starts_with("expiration_");
                if metric {
                    assert!(
                        known.contains(&token),
                        "{}: unknown series {token}",
                        panel["title"]
                    );
                    charted.insert(token.to_owned());
                }
            }
        }
    }
    for series in known {
        assert!(charted.contains(series), "{series} is not charted");
    }
}

/// Every `"name"` string literal of the workspace's Rust sources under
/// `dirs`: where the metrics the alerts read must be recorded.
fn string_literals_in(dirs: &[&str]) -> String {
    fn walk(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut all = String::new();
    for d in dirs {
        walk(&root().join(d), &mut all);
    }
    all
}

#[test]
fn the_alert_rules_ship_in_the_chart_and_read_only_series_the_code_records() {
    let rules: Value =
        serde_saphyr::from_str(&read("deploy/helm/ticketing/files/alerts.yaml")).unwrap();
    let sources = string_literals_in(&["platform", "marketplace"]);
    let mut alerts = Vec::new();
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        alerts.push(rule["alert"].as_str().unwrap().to_owned());
        let expr = rule["expr"].as_str().unwrap();
        for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !token.contains('_') || token == "histogram_quantile" {
                continue;
            }
            let series = token.strip_suffix("_bucket").unwrap_or(token);
            assert!(
                sources.contains(&format!("\"{series}\"")),
                "{}: no code records {series}",
                rule["alert"]
            );
        }
        // Each alert has its runbook entry.
        let anchor = rule["annotations"]["runbook"].as_str().unwrap();
        let heading = anchor.split('#').nth(1).unwrap();
        assert!(
            read("docs/operations.md")
                .lines()
                .any(|l| l.starts_with('#')
                    && l.to_lowercase().replace(['#', ' ', '`'], "") == heading),
            "docs/operations.md has no heading for {heading}"
        );
    }
    assert_eq!(alerts.len(), 7, "{alerts:?}");

    let Some(helm) = helm() else { return };
    let key = "secrets.jwtKey=0123456789abcdef-check";
    let objects = render(&helm, &["--set", key]).unwrap();
    assert_eq!(count(&objects, "PrometheusRule"), 0, "off by default");
    let objects = render(
        &helm,
        &[
            "--set",
            key,
            "--set",
            "prometheusRule.enabled=true,prometheusRule.labels.release=prom",
        ],
    )
    .unwrap();
    let rule = find(&objects, "PrometheusRule", "t-ticketing");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    assert_eq!(
        rule["spec"], rules,
        "the chart carries the tested file as it is"
    );
}

/// `values-nats-cluster.yaml`: every service and the provisioning job get
/// the three servers, and the streams three replicas.
#[test]
fn the_nats_cluster_values_give_every_process_the_server_list_and_streams_three_replicas() {
    let Some(helm) = helm() else { return };
    let values = root().join("deploy/helm/ticketing/values-nats-cluster.yaml");
    let objects = render(&helm, &[KEY, "-f", values.to_str().unwrap()]).unwrap();
    let list = "nats://nats-0.nats-headless:4222,nats://nats-1.nats-headless:4222,nats://nats-2.nats-headless:4222";
    for service in ["auth", "tickets", "orders", "expiration", "payments"] {
        assert_eq!(env_of(&objects, service)["NATS_URL"], list, "{service}");
    }
    let job = find(&objects, "Job", "t-ticketing-streams");
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(c)["NATS_URL"], list);
    assert_eq!(
        args(c),
        ["streams", "apply", "--wait", "120s", "--replicas", "3"]
    );
}
