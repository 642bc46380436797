//! `baton auth token NAME`: a fresh random bearer token and the `[[auth.tokens]]` entry
//! holding its SHA-256 (the config file never holds the token itself).

use clap::{Args, Subcommand};
use ring::rand::{SecureRandom, SystemRandom};

use super::{CliError, Ctx, Exit};
use crate::auth::policy::token_hash;
use crate::config::check_principal;

/// `baton auth`.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Print a new random token for principal NAME and the node.toml entry with its hash.
    Token(TokenArgs),
}

/// `baton auth token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The principal the token authenticates (recorded as the actor in the audit trail).
    pub name: String,
    /// Roles to write into the entry: reader, agent, operator, admin.
    #[arg(long, value_delimiter = ',', default_value = "reader")]
    pub roles: Vec<String>,
}

/// A new token: 32 random bytes from the operating system, hex.
pub fn new_token() -> Result<String, CliError> {
    let mut b = [0u8; 32];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CliError::Other("the operating system gave no random bytes".into()))?;
    Ok(format!("baton_{}", hex::encode(b)))
}

/// `baton auth ...`.
pub fn run(ctx: &mut Ctx<'_>, cmd: AuthCommand) -> Result<Exit, CliError> {
    let AuthCommand::Token(args) = cmd;
    check_principal(&args.name).map_err(|m| CliError::Usage(format!("NAME: {m}")))?;
    for r in &args.roles {
        if crate::auth::Role::parse(r).is_none() {
            return Err(CliError::Usage(format!(
                "--roles: {r:?} is not one of reader, agent, operator, admin"
            )));
        }
    }
    let token = new_token()?;
    let roles: Vec<String> = args.roles.iter().map(|r| format!("{r:?}")).collect();
    let text = format!(
        "token: {token}\n\n\
         # Give the token to {name} (--token or BATON_TOKEN); put this in every node's node.toml:\n\
         [[auth.tokens]]\n\
         name = \"{name}\"\n\
         sha256 = \"{hash}\"\n\
         roles = [{roles}]\n\
         # services = [\"payments\"]   # optional: only these services\n\
         # regions = [\"eu-west\"]     # optional: only these regions\n",
        name = args.name,
        hash = hex::encode(token_hash(&token)),
        roles = roles.join(", "),
    );
    ctx.out
        .write_all(text.as_bytes())
        .map_err(|source| CliError::Io {
            context: "writing the token".into(),
            source,
        })?;
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_printable() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 6 + 64);
        assert!(a.bytes().all(|c| c.is_ascii_graphic()));
    }
}
