//! Configuration from the environment, parsed once per isolate.

use std::cell::RefCell;
use std::rc::Rc;

use gateway_core::config::Config;
use gateway_core::GatewayError;
use worker::Env;

thread_local! {
    static CONFIG: RefCell<Option<Rc<Config>>> = const { RefCell::new(None) };
}

/// The parsed configuration. Parsed on first use in this isolate; a malformed variable is a
/// 500 problem naming the variable (never a panic).
pub fn config(env: &Env) -> Result<Rc<Config>, GatewayError> {
    if let Some(c) = CONFIG.with(|c| c.borrow().clone()) {
        return Ok(c);
    }
    let parsed = Rc::new(Config::from_lookup(&|name| var(env, name))?);
    CONFIG.with(|c| *c.borrow_mut() = Some(parsed.clone()));
    Ok(parsed)
}

/// A string variable or secret, if set and not empty.
pub fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name)
        .ok()
        .map(|v| v.to_string())
        .filter(|s| !s.is_empty())
}

/// The admin token secret, if configured.
pub fn admin_token(env: &Env) -> Option<String> {
    env.secret(name_of_admin_token())
        .ok()
        .map(|v| v.to_string())
        .filter(|s| !s.is_empty())
}

const fn name_of_admin_token() -> &'static str {
    "ADMIN_TOKEN"
}
