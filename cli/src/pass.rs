//! Where the passphrase comes from: HEARTH_PASSPHRASE, else --passphrase-file,
//! else a no-echo prompt on a terminal; with none of them, a clear error.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, bail};
use hearth::Passphrase;
use zeroize::Zeroizing;

// Every buffer that holds a passphrase is wiped when dropped: `Passphrase`
// itself, and the strings it is read into (`Zeroizing`).

fn from_tty(prompt: &str, confirm: bool) -> Result<Passphrase> {
    let p = Zeroizing::new(rpassword::prompt_password(prompt).context("reading the passphrase")?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Repeat it: ").context("reading the passphrase")?);
        if *again != *p {
            bail!("the passphrases do not match");
        }
    }
    if p.is_empty() {
        bail!("the passphrase is empty");
    }
    Ok(Passphrase::new(p.as_str()))
}

/// The store passphrase. `confirm` asks twice on a terminal (for `init`).
pub fn passphrase(file: Option<&Path>, confirm: bool) -> Result<Passphrase> {
    if let Ok(p) = std::env::var("HEARTH_PASSPHRASE") {
        if p.is_empty() {
            bail!("HEARTH_PASSPHRASE is set but empty");
        }
        return Ok(Passphrase::new(p));
    }
    if let Some(f) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(f).with_context(|| format!("reading passphrase file {}", f.display()))?,
        );
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            bail!("passphrase file {} is empty", f.display());
        }
        return Ok(Passphrase::new(line));
    }
    if std::io::stdin().is_terminal() {
        return from_tty("Passphrase: ", confirm);
    }
    bail!("no passphrase: set HEARTH_PASSPHRASE, use --passphrase-file FILE, or run on a terminal")
}

/// The new passphrase for `passwd`: HEARTH_NEW_PASSPHRASE or a prompt.
pub fn new_passphrase() -> Result<Passphrase> {
    if let Ok(p) = std::env::var("HEARTH_NEW_PASSPHRASE") {
        if p.is_empty() {
            bail!("HEARTH_NEW_PASSPHRASE is set but empty");
        }
        return Ok(Passphrase::new(p));
    }
    if std::io::stdin().is_terminal() {
        return from_tty("New passphrase: ", true);
    }
    bail!("no new passphrase: set HEARTH_NEW_PASSPHRASE or run on a terminal")
}
