//! Who a verified token speaks for.

use std::sync::Arc;

use super::Forbidden;

/// The caller a verified token names: what handlers authorise with.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub`: a user's name (the customer id of the services) or a client's id.
    pub subject: String,
    /// `client_id`: the client the token was issued to, if any.
    pub client_id: Option<String>,
    /// `roles`.
    pub roles: Vec<String>,
    /// `scope`, split on spaces.
    pub scopes: Vec<String>,
    /// `exp`, in UNIX seconds.
    pub expires_at: i64,
    /// `jti`, if the token has one.
    pub token_id: Option<String>,
    /// The token itself, to pass on to a downstream call.
    pub token: Arc<str>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never in a log line.
        f.debug_struct("Principal")
            .field("subject", &self.subject)
            .field("client_id", &self.client_id)
            .field("roles", &self.roles)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

impl Principal {
    /// Whose data the caller may see and act on: `None` for everyone's (an `admin`, or a
    /// platform process with the `service` role calling on its own behalf), `Some(customer
    /// id)` for that customer's own only (every other caller: its subject is the customer id
    /// the services use).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use flotilla_identity::Principal;
    /// let caller = |roles: &[&str]| Principal {
    ///     subject: "alice".into(), client_id: None,
    ///     roles: roles.iter().map(|r| r.to_string()).collect(),
    ///     scopes: vec![], expires_at: 0, token_id: None, token: Arc::from(""),
    /// };
    /// assert_eq!(caller(&["customer"]).confined_to(), Some("alice"));
    /// assert_eq!(caller(&["admin"]).confined_to(), None);
    /// assert_eq!(caller(&["service"]).confined_to(), None);
    /// assert_eq!(caller(&[]).confined_to(), Some("alice"));
    /// ```
    pub fn confined_to(&self) -> Option<&str> {
        let everything = self
            .roles
            .iter()
            .any(|role| role == "admin" || role == crate::credentials::SERVICE_ROLE);
        (!everything).then_some(self.subject.as_str())
    }

    /// Whether the caller may see and act on what belongs to customer `owner`
    /// ([`confined_to`](Self::confined_to)).
    pub fn may_see(&self, owner: &str) -> bool {
        self.confined_to().is_none_or(|me| me == owner)
    }

    /// Whether the token carries role `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the token carries scope `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// `Ok` if the token carries role `role`, else the 403 answer.
    pub fn require_role(&self, role: &str) -> Result<(), Forbidden> {
        if self.has_role(role) {
            Ok(())
        } else {
            Err(Forbidden {
                what: "role",
                name: role.to_owned(),
            })
        }
    }

    /// `Ok` if the token carries scope `scope`, else the 403 answer.
    pub fn require_scope(&self, scope: &str) -> Result<(), Forbidden> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(Forbidden {
                what: "scope",
                name: scope.to_owned(),
            })
        }
    }
}
