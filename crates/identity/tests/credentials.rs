//! The seed file: the shipped one verifies with its documented secrets, broken ones are refused
//! naming the entry and the key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use flotilla_identity::credentials::{Credentials, Kind, SHIPPED, SeedError, verify_secret};

/// Every `# password: X` / `# secret: X` comment of the shipped file, with the entry it is in.
fn documented_secrets() -> Vec<(String, String)> {
    let mut entry = String::new();
    let mut found = Vec::new();
    for line in SHIPPED.lines() {
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            entry = header.to_owned();
        } else if let Some(secret) = line
            .strip_prefix("# password: ")
            .or_else(|| line.strip_prefix("# secret: "))
        {
            found.push((entry.clone(), secret.trim().to_owned()));
        }
    }
    found
}

#[test]
fn every_seeded_hash_verifies_with_its_documented_secret() {
    let credentials = Credentials::shipped().expect("the shipped seed is valid");
    let documented = documented_secrets();
    let accounts = credentials.users().count() + credentials.clients().count();
    assert_eq!(
        documented.len(),
        accounts,
        "one documented secret per account"
    );
    // Argon2 is slow on purpose (and slower unoptimised): check on all cores.
    let checks: Vec<_> = documented
        .into_iter()
        .map(|(entry, secret)| {
            let (table, name) = entry.split_once('.').expect("users.x or clients.x");
            let account = match table {
                "users" => credentials.user(name),
                "clients" => credentials.client(name),
                other => panic!("a secret documented under [{other}]"),
            }
            .unwrap_or_else(|| panic!("no account {entry}"))
            .clone();
            std::thread::spawn(move || {
                let good = verify_secret(&secret, account.hash());
                let wrong = verify_secret(&format!("{secret}x"), account.hash());
                (entry, good, wrong)
            })
        })
        .collect();
    for check in checks {
        let (entry, good, wrong) = check.join().unwrap();
        assert!(good, "{entry}: the documented secret does not verify");
        assert!(!wrong, "{entry}: a wrong secret verifies");
    }
}

#[test]
fn the_shipped_seed_has_the_platform_accounts() {
    let credentials = Credentials::shipped().unwrap();
    for customer in ["alice", "bob", "carol"] {
        let user = credentials.user(customer).unwrap();
        assert_eq!(user.kind, Kind::User);
        assert_eq!(user.roles, ["customer"]);
        assert!(user.may_have("orders:write"));
        assert!(!user.may_have("admin"));
    }
    assert_eq!(credentials.user("admin").unwrap().roles, ["admin"]);
    let operator = credentials.client("operator").unwrap();
    assert_eq!(operator.roles, ["admin"]);
    assert!(operator.may_have("registry:write") && operator.may_have("admin"));
    for service in ["gateway", "order", "payment", "inventory", "shipping"] {
        let client = credentials.client(service).unwrap();
        assert_eq!(client.kind, Kind::Client);
        assert_eq!(client.roles, ["service"]);
        assert!(client.may_have("registry:write"), "{service}");
        assert!(!client.may_have("admin"), "{service}");
    }
    assert!(
        credentials
            .client("order")
            .unwrap()
            .may_have("catalog:read")
    );
    assert!(credentials.user("operator").is_none());
}

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$STKls/jwF3kjCID9/jo0kA$DWXpfk0s6Qre8JI44QY7xIBXLNZkPZKvQD5YMhmTqUE";

fn seed(users: &str) -> String {
    format!(
        "[scopes]\n\"orders:read\" = \"read\"\n\n[roles.customer]\nscopes = [\"orders:read\"]\n\n{users}"
    )
}

fn refusal(text: &str) -> String {
    Credentials::parse(text).expect_err("refused").to_string()
}

#[test]
fn a_broken_seed_is_refused_naming_the_entry_and_the_key() {
    let good = seed(&format!(
        "[users.dave]\npassword_hash = \"{HASH}\"\nroles = [\"customer\"]\n"
    ));
    assert!(Credentials::parse(&good).is_ok());

    let unknown_key = refusal(&seed(&format!(
        "[users.dave]\npasword_hash = \"{HASH}\"\nroles = [\"customer\"]\n"
    )));
    assert!(unknown_key.contains("pasword_hash"), "{unknown_key}");
    assert!(unknown_key.contains("users.dave"), "{unknown_key}");

    let duplicate = refusal(&seed(&format!(
        "[users.dave]\npassword_hash = \"{HASH}\"\nroles = [\"customer\"]\n\
         [users.dave]\npassword_hash = \"{HASH}\"\nroles = [\"customer\"]\n"
    )));
    assert!(
        duplicate.contains("dave") && duplicate.contains("duplicate"),
        "{duplicate}"
    );

    let bad_hash = Credentials::parse(&seed(
        "[users.dave]\npassword_hash = \"plaintext\"\nroles = [\"customer\"]\n",
    ))
    .unwrap_err();
    assert!(
        matches!(&bad_hash, SeedError::Invalid { entry, key: "password_hash", .. } if entry == "users.dave"),
        "{bad_hash}"
    );
    let bcrypt = refusal(&seed(
        "[users.dave]\npassword_hash = \"$argon2i$v=19$m=19456,t=2,p=1$STKls/jwF3kjCID9/jo0kA$DWXpfk0s6Qre8JI44QY7xIBXLNZkPZKvQD5YMhmTqUE\"\nroles = [\"customer\"]\n",
    ));
    assert!(bcrypt.contains("argon2id"), "{bcrypt}");

    let unknown_role = Credentials::parse(&seed(&format!(
        "[users.dave]\npassword_hash = \"{HASH}\"\nroles = [\"superuser\"]\n"
    )))
    .unwrap_err();
    assert!(
        matches!(&unknown_role, SeedError::Invalid { entry, key: "roles", reason } if entry == "users.dave" && reason.contains("superuser")),
        "{unknown_role}"
    );

    let unknown_scope = refusal(&seed(&format!(
        "[users.dave]\npassword_hash = \"{HASH}\"\nroles = [\"customer\"]\nscopes = [\"orders:burn\"]\n"
    )));
    assert!(
        unknown_scope.contains("users.dave") && unknown_scope.contains("orders:burn"),
        "{unknown_scope}"
    );

    let both = refusal(&seed(&format!(
        "[users.dave]\npassword_hash = \"{HASH}\"\nroles = [\"customer\"]\n\
         [clients.dave]\nsecret_hash = \"{HASH}\"\nroles = [\"customer\"]\n"
    )));
    assert!(
        both.contains("clients.dave") && both.contains("also a user"),
        "{both}"
    );

    let bad_name = refusal(&seed(&format!(
        "[users.\"da ve\"]\npassword_hash = \"{HASH}\"\nroles = [\"customer\"]\n"
    )));
    assert!(bad_name.contains("users.da ve"), "{bad_name}");
}
