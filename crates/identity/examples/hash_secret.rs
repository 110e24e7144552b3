//! Prints the Argon2id PHC string of a password or client secret, for the identity seed file:
//! `cargo run -p flotilla-identity --example hash_secret -- 'the secret'`.

fn main() {
    let Some(secret) = std::env::args().nth(1) else {
        eprintln!("usage: hash_secret SECRET");
        std::process::exit(2);
    };
    println!("{}", flotilla_identity::credentials::hash_secret(&secret));
}
