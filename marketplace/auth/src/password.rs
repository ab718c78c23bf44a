//! Argon2id password hashing. Slow on purpose, so run off the async
//! runtime ([`hash_off_runtime`], [`verify_off_runtime`]), as many at a time
//! as there are cores.
//!
//! The parameters are OWASP's m = 46 MiB, t = 1, p = 1 — one of its
//! equivalent Argon2id settings, chosen over the crate's default (19 MiB,
//! t = 2) for memory: a working area above 32 MiB (glibc's largest dynamic
//! mmap threshold) is always mapped and unmapped whole, while 19 MiB areas
//! were kept in the heap after use — 64 sign-ups grew the process by 1.2 GB.
//! Hashes made with other parameters still verify (they carry their own).

use std::sync::OnceLock;

use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use argon2::{Algorithm, Argon2, Params, Version};

/// Memory cost in KiB (46 MiB).
pub const MEMORY_KIB: u32 = 47_104;

fn argon2() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(MEMORY_KIB, 1, 1, None).expect("valid Argon2 parameters"),
    )
}

/// Hashes `password` with a fresh salt (PHC string format).
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches the stored PHC `hash`.
pub fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// At most one hash per core at a time: more only queue for the CPU while
/// each holds its 46 MiB.
fn gate() -> &'static tokio::sync::Semaphore {
    static GATE: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    GATE.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    })
}

async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let _permit = gate().acquire().await.expect("the gate is never closed");
    tokio::task::spawn_blocking(work).await
}

/// [`hash`] on a blocking thread, gated.
pub async fn hash_off_runtime(
    password: String,
) -> Result<Result<String, argon2::password_hash::Error>, tokio::task::JoinError> {
    off_runtime(move || hash(&password)).await
}

/// [`verify`] on a blocking thread, gated.
pub async fn verify_off_runtime(
    password: String,
    hash: String,
) -> Result<bool, tokio::task::JoinError> {
    off_runtime(move || verify(&password, &hash)).await
}

/// A hash of nothing anyone knows, verified against when the e-mail is
/// unknown so that both failures take the same time.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash("no account has this password").unwrap_or_default())
}

pub fn warm_up() {
    let _ = dummy_hash();
}

#[cfg(test)]
mod tests {
    #[test]
    fn hashes_are_argon2id_salted_and_verify_only_the_right_password() {
        let a = super::hash("correct horse").unwrap();
        let b = super::hash("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=47104,t=1,p=1$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(super::verify("correct horse", &a));
        assert!(!super::verify("wrong horse", &a));
        assert!(!super::verify("x", "not a hash"));
    }
}
