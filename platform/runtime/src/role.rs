//! What one process of a product is: some of its services (with or without
//! its pages), its pages alone, or the gateway alone — parsed once from
//! `--services`, the same way for every product.

/// A product's services, as `--services` names them.
#[derive(Debug, Clone, Copy)]
pub struct Catalogue {
    /// The variable that sets `--services`, for messages.
    pub variable: &'static str,
    /// Every service, in the order a process starts them.
    pub services: &'static [&'static str],
    /// Whether the product has a stand-alone gateway (`--services gateway`).
    pub gateway: bool,
}

/// The name of the pages (the web client) in `--services`.
pub const PAGES: &str = "web";
/// The name of the gateway in `--services`.
pub const GATEWAY: &str = "gateway";

/// What this process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Services of the product, in the product's order (at least one), and
    /// whether the pages run here too.
    Services {
        services: Vec<&'static str>,
        pages: bool,
    },
    /// The pages alone, in front of services in other processes.
    Pages,
    /// The reverse proxy alone, in front of services in other processes.
    Gateway,
}

impl Role {
    /// Reads `--services`: service names, `web`, `all` (every service and
    /// the pages), or `gateway` alone. Names are trimmed and case-blind;
    /// repeats count once.
    pub fn parse(names: &[String], catalogue: &Catalogue) -> Result<Role, String> {
        let mut services = Vec::new();
        let mut pages = false;
        let names: Vec<String> = names
            .iter()
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        for name in &names {
            match name.as_str() {
                GATEWAY if catalogue.gateway => {
                    if names.len() != 1 {
                        return Err(format!("the gateway runs alone: --services {GATEWAY}"));
                    }
                    return Ok(Role::Gateway);
                }
                "all" => {
                    services.extend_from_slice(catalogue.services);
                    pages = true;
                }
                PAGES => pages = true,
                other => match catalogue.services.iter().find(|s| **s == other) {
                    Some(s) => services.push(*s),
                    None => {
                        let gateway = if catalogue.gateway { ", gateway" } else { "" };
                        return Err(format!(
                            "unknown service {other:?} in --services / {} (expected {}, {PAGES}{gateway} or all)",
                            catalogue.variable,
                            catalogue.services.join(", ")
                        ));
                    }
                },
            }
        }
        // The product's order: every name here came from its list.
        services.sort_by_key(|s| catalogue.services.iter().position(|c| c == s));
        services.dedup();
        Ok(match (services.is_empty(), pages) {
            (true, true) => Role::Pages,
            (true, false) => return Err("no services to run".into()),
            (false, pages) => Role::Services { services, pages },
        })
    }

    /// The services this process runs (none for the pages or the gateway).
    pub fn services(&self) -> &[&'static str] {
        match self {
            Role::Services { services, .. } => services,
            Role::Pages | Role::Gateway => &[],
        }
    }

    /// Whether this process serves the pages.
    pub fn pages(&self) -> bool {
        matches!(self, Role::Pages | Role::Services { pages: true, .. })
    }

    /// Whether every one of `services` runs in this process.
    pub fn runs_all(&self, services: impl IntoIterator<Item = &'static str>) -> bool {
        let here = self.services();
        services.into_iter().all(|s| here.contains(&s))
    }
}

/// How a process running `--services names` introduces itself to trace
/// collectors: `whole` when it runs all of them (or names none), else the
/// names joined by `+` after `prefix` (`orders+payments`, `notes-query`).
pub fn process_name(names: &[String], whole: &str, prefix: &str) -> String {
    let names: Vec<&str> = names
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() || names.iter().any(|s| s.eq_ignore_ascii_case("all")) {
        whole.to_owned()
    } else {
        format!("{prefix}{}", names.join("+"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: Catalogue = Catalogue {
        variable: "SHOP_SERVICES",
        services: &["auth", "tickets", "orders"],
        gateway: true,
    };

    fn parse(names: &[&str]) -> Result<Role, String> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        Role::parse(&names, &SHOP)
    }

    #[test]
    fn services_are_parsed_deduplicated_and_ordered() {
        assert_eq!(
            parse(&["all"]).unwrap(),
            Role::Services {
                services: vec!["auth", "tickets", "orders"],
                pages: true
            }
        );
        assert_eq!(
            parse(&["orders", "Auth", "auth"]).unwrap(),
            Role::Services {
                services: vec!["auth", "orders"],
                pages: false
            }
        );
        assert_eq!(
            parse(&["web", "tickets"]).unwrap(),
            Role::Services {
                services: vec!["tickets"],
                pages: true
            }
        );
        assert_eq!(parse(&["web"]).unwrap(), Role::Pages);
    }

    #[test]
    fn a_process_is_named_after_what_it_runs() {
        let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(process_name(&n(&["all"]), "shop", ""), "shop");
        assert_eq!(process_name(&n(&[]), "shop", ""), "shop");
        assert_eq!(
            process_name(&n(&["orders", " auth"]), "shop", ""),
            "orders+auth"
        );
        assert_eq!(
            process_name(&n(&["query"]), "notes", "notes-"),
            "notes-query"
        );
    }

    #[test]
    fn the_gateway_runs_alone() {
        assert_eq!(parse(&["gateway"]).unwrap(), Role::Gateway);
        assert!(parse(&["gateway", "auth"]).unwrap_err().contains("alone"));
        let no_gateway = Catalogue {
            gateway: false,
            ..SHOP
        };
        let err = Role::parse(&["gateway".to_owned()], &no_gateway).unwrap_err();
        assert!(err.contains("unknown service \"gateway\""), "{err}");
    }

    #[test]
    fn unknown_and_empty_lists_are_refused_with_the_variable_named() {
        let err = parse(&["billing"]).unwrap_err();
        assert!(
            err.contains("billing") && err.contains("SHOP_SERVICES"),
            "{err}"
        );
        assert!(parse(&[" "]).is_err());
    }
}
