//! The admin side's people and their API tokens. Roles: `admin` (everything), `approver`
//! (decides held calls), `auditor` (reads the registry and the audit log). Tokens are handed out
//! once and kept only as SHA-256, like agent keys.

use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use crate::error::is_unique_violation;
use crate::secret::{display_prefix, generate, hash_secret, new_id};
use crate::time::now_ms;
use crate::{BeginWrite, Store, StoreError, on_pool};

/// What admin tokens start with.
pub const USER_TOKEN_PREFIX: &str = "pt_";

/// What a user may do on the admin side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Approver,
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "admin" => Ok(Role::Admin),
            "approver" => Ok(Role::Approver),
            "auditor" => Ok(Role::Auditor),
            _ => Err(StoreError::Invalid(format!(
                "role must be admin, approver or auditor, got {s:?}"
            ))),
        }
    }
}

/// A person on the admin side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
    /// Sorted, without duplicates.
    pub roles: Vec<Role>,
    pub created_at: i64,
    /// When an admin disabled the user (no token of theirs authenticates); `None`: enabled.
    #[serde(default)]
    pub disabled_at: Option<i64>,
}

impl User {
    /// Whether the user holds `role` itself (admin does not imply the others here; the caller's
    /// policy decides that).
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A freshly generated admin token. `secret` exists only here.
#[derive(Clone, Serialize)]
pub struct NewToken {
    pub id: String,
    pub user_id: String,
    pub secret: String,
    pub prefix: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A stored admin token, as listings show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub user_id: String,
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

const USER_COLUMNS: &str = "id, name, email, roles, created_at, disabled_at";

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    name: String,
    email: String,
    roles: Json<Vec<Role>>,
    created_at: i64,
    disabled_at: Option<i64>,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> User {
        User {
            id: r.id,
            name: r.name,
            email: r.email,
            roles: r.roles.0,
            created_at: r.created_at,
            disabled_at: r.disabled_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    user_id: String,
    prefix: String,
    created_at: i64,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl From<TokenRow> for TokenInfo {
    fn from(r: TokenRow) -> TokenInfo {
        TokenInfo {
            id: r.id,
            user_id: r.user_id,
            prefix: r.prefix,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
            last_used_at: r.last_used_at,
        }
    }
}

fn sorted_roles(roles: &[Role]) -> Vec<Role> {
    let mut r = roles.to_vec();
    r.sort();
    r.dedup();
    r
}

fn validate_name(name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "user name must be 1 to 128 printable characters, got {name:?}"
        )));
    }
    Ok(())
}

const INSERT_USER: &str =
    "INSERT INTO users (id, name, email, roles, created_at) VALUES ($1, $2, $3, $4, $5)";
const INSERT_TOKEN: &str = "INSERT INTO user_tokens (id, user_id, token_hash, prefix, \
     created_at) VALUES ($1, $2, $3, $4, $5)";

/// Inside a change's `begin_exclusive` transaction `$tx`, before it takes admin powers from
/// user `$user_id` (demoting or disabling them, `$except_token` empty; or revoking their token
/// `$except_token`): return Conflict from the enclosing block unless an enabled admin with a
/// live token would remain. The exclusive transaction serialises such changes on both
/// backends, so two admins disabling each other at once cannot both pass (a lone conditional
/// `UPDATE` would not do on PostgreSQL: under READ COMMITTED each sees the other still enabled).
macro_rules! keep_an_admin {
    ($tx:ident, $user_id:expr, $except_token:expr, $now:expr) => {{
        let (user_id, except_token, now): (&str, &str, i64) = ($user_id, $except_token, $now);
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let user: Option<UserRow> = sqlx::query_as(&sql)
            .bind(user_id)
            .fetch_optional(&mut *$tx)
            .await?;
        if let Some(u) = user
            && u.disabled_at.is_none()
            && u.roles.0.contains(&Role::Admin)
        {
            // Demoted or disabled: their other tokens go too; revoked: only that token does.
            let except_user = if except_token.is_empty() { user_id } else { "" };
            let holders: Vec<Json<Vec<Role>>> = sqlx::query_scalar(
                "SELECT u.roles FROM users u JOIN user_tokens t ON t.user_id = u.id \
                 WHERE u.id <> $1 AND t.id <> $2 AND u.disabled_at IS NULL \
                 AND (t.revoked_at IS NULL OR t.revoked_at > $3)",
            )
            .bind(except_user)
            .bind(except_token)
            .bind(now)
            .fetch_all(&mut *$tx)
            .await?;
            if !holders.iter().any(|r| r.0.contains(&Role::Admin)) {
                return Err(StoreError::conflict(
                    "user",
                    u.name,
                    "is the last enabled admin with a live token; make another admin first",
                ));
            }
        }
    }};
}

impl Store {
    /// Add a user. Conflict if the name is taken.
    pub async fn create_user(
        &self,
        name: &str,
        email: &str,
        roles: &[Role],
    ) -> Result<User, StoreError> {
        validate_name(name)?;
        let id = new_id("usr_");
        let done = on_pool!(self, |pool| {
            sqlx::query(INSERT_USER)
                .bind(&id)
                .bind(name)
                .bind(email)
                .bind(Json(sorted_roles(roles)))
                .bind(now_ms())
                .execute(pool)
                .await
                .map(|_| ())
        });
        match done {
            Ok(_) => self.get_user(&id).await,
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::conflict("user", name, "already exists"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One user by id; NotFound if none.
    pub async fn get_user(&self, id: &str) -> Result<User, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row: Option<UserRow> = on_pool!(self, |pool| {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?
        });
        row.map(User::from)
            .ok_or_else(|| StoreError::not_found("user", id))
    }

    /// One user by name, if any.
    pub async fn find_user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1");
        let row: Option<UserRow> = on_pool!(self, |pool| {
            sqlx::query_as(&sql).bind(name).fetch_optional(pool).await?
        });
        Ok(row.map(User::from))
    }

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY name");
        let rows: Vec<UserRow> =
            on_pool!(self, |pool| sqlx::query_as(&sql).fetch_all(pool).await?);
        Ok(rows.into_iter().map(User::from).collect())
    }

    /// Replace a user's roles. NotFound if there is no such user; Conflict if that would take
    /// the admin role from the last enabled admin with a live token.
    pub async fn set_user_roles(&self, user_id: &str, roles: &[Role]) -> Result<User, StoreError> {
        let roles = sorted_roles(roles);
        let demotes = !roles.contains(&Role::Admin);
        let owned = user_id.to_string();
        self.detached(move |store| async move {
            let id = owned.as_str();
            on_pool!(store, |pool| {
                let mut tx = pool.begin_exclusive().await?;
                if demotes {
                    keep_an_admin!(tx, id, "", now_ms());
                }
                let done = sqlx::query("UPDATE users SET roles = $1 WHERE id = $2")
                    .bind(Json(roles))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if done == 0 {
                    return Err(StoreError::not_found("user", id));
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await?;
        self.get_user(user_id).await
    }

    /// Disable (`true`) or enable a user. A disabled user's tokens stop authenticating at once;
    /// nothing else of theirs changes. NotFound if there is no such user; Conflict if it is the
    /// last enabled admin with a live token.
    pub async fn set_user_disabled(
        &self,
        user_id: &str,
        disabled: bool,
    ) -> Result<User, StoreError> {
        let at = disabled.then(now_ms);
        let owned = user_id.to_string();
        self.detached(move |store| async move {
            let id = owned.as_str();
            on_pool!(store, |pool| {
                let mut tx = pool.begin_exclusive().await?;
                if disabled {
                    keep_an_admin!(tx, id, "", now_ms());
                }
                let done = sqlx::query(
                    "UPDATE users SET disabled_at = CASE WHEN $1 THEN COALESCE(disabled_at, $2) \
                     END WHERE id = $3",
                )
                .bind(disabled)
                .bind(at)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if done == 0 {
                    return Err(StoreError::not_found("user", id));
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await?;
        self.get_user(user_id).await
    }

    /// Generate an admin API token for a user. NotFound if there is no such user.
    pub async fn create_user_token(&self, user_id: &str) -> Result<NewToken, StoreError> {
        self.get_user(user_id).await?;
        let secret = generate(USER_TOKEN_PREFIX);
        let token = NewToken {
            id: new_id("tok_"),
            user_id: user_id.to_string(),
            prefix: display_prefix(&secret),
            secret,
        };
        on_pool!(self, |pool| {
            sqlx::query(INSERT_TOKEN)
                .bind(&token.id)
                .bind(user_id)
                .bind(hash_secret(&token.secret))
                .bind(&token.prefix)
                .bind(now_ms())
                .execute(pool)
                .await?;
        });
        Ok(token)
    }

    /// A user's tokens, oldest first, revoked ones included.
    pub async fn list_user_tokens(&self, user_id: &str) -> Result<Vec<TokenInfo>, StoreError> {
        let rows: Vec<TokenRow> = on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT id, user_id, prefix, created_at, revoked_at, last_used_at \
                 FROM user_tokens WHERE user_id = $1 ORDER BY created_at, id",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(TokenInfo::from).collect())
    }

    /// Revoke an admin token now (a revoked one stays as it was). NotFound if there is no such
    /// token; Conflict if it is the last live token of the last enabled admin.
    pub async fn revoke_user_token(&self, token_id: &str) -> Result<(), StoreError> {
        let token_id = token_id.to_string();
        self.detached(move |store| async move {
            let id = token_id.as_str();
            let now = now_ms();
            on_pool!(store, |pool| {
                let mut tx = pool.begin_exclusive().await?;
                let holder: Option<(String, Option<i64>)> =
                    sqlx::query_as("SELECT user_id, revoked_at FROM user_tokens WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some((user_id, revoked_at)) = holder else {
                    return Err(StoreError::not_found("token", id));
                };
                if revoked_at.is_none() {
                    keep_an_admin!(tx, &user_id, id, now);
                    sqlx::query(
                        "UPDATE user_tokens SET revoked_at = $1 WHERE id = $2 \
                         AND revoked_at IS NULL",
                    )
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            });
            Ok(())
        })
        .await
    }

    /// The user holding this live token, if any; records the use.
    pub async fn authenticate_user(&self, secret: &str) -> Result<Option<User>, StoreError> {
        let hash = hash_secret(secret);
        let now = now_ms();
        let row: Option<(String, String)> = on_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT t.id, t.user_id FROM user_tokens t JOIN users u ON u.id = t.user_id \
                 WHERE t.token_hash = $1 AND (t.revoked_at IS NULL OR t.revoked_at > $2) \
                 AND u.disabled_at IS NULL",
            )
            .bind(&hash)
            .bind(now)
            .fetch_optional(pool)
            .await?
        });
        let Some((token_id, user_id)) = row else {
            return Ok(None);
        };
        on_pool!(self, |pool| {
            sqlx::query("UPDATE user_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&token_id)
                .execute(pool)
                .await?;
        });
        self.get_user(&user_id).await.map(Some)
    }

    /// Bootstrap the first admin from the environment, idempotently: make sure a user `name`
    /// exists and holds the admin role, and that `token_secret` is one of its tokens. A token
    /// that exists already (even revoked: an admin's revocation is not undone by a restart) is
    /// left as it is; Conflict if it is another user's token.
    pub async fn ensure_admin(&self, name: &str, token_secret: &str) -> Result<User, StoreError> {
        validate_name(name)?;
        if token_secret.len() < 16 {
            return Err(StoreError::Invalid(
                "the bootstrap admin token must be at least 16 characters".into(),
            ));
        }
        let hash = hash_secret(token_secret);
        let now = now_ms();
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1");
        let name = name.to_string();
        let user_id = self
            .detached(move |store| async move {
                let name = name.as_str();
                Ok(on_pool!(store, |pool| {
                    let mut tx = pool.begin_exclusive().await?;
                    let row: Option<UserRow> = sqlx::query_as(&sql)
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let user_id = match row {
                        Some(u) => {
                            if !u.roles.0.contains(&Role::Admin) {
                                let mut roles = u.roles.0.clone();
                                roles.push(Role::Admin);
                                sqlx::query("UPDATE users SET roles = $1 WHERE id = $2")
                                    .bind(Json(sorted_roles(&roles)))
                                    .bind(&u.id)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                            u.id
                        }
                        None => {
                            let id = new_id("usr_");
                            sqlx::query(INSERT_USER)
                                .bind(&id)
                                .bind(name)
                                .bind("")
                                .bind(Json(vec![Role::Admin]))
                                .bind(now)
                                .execute(&mut *tx)
                                .await?;
                            id
                        }
                    };
                    let holder: Option<String> =
                        sqlx::query_scalar("SELECT user_id FROM user_tokens WHERE token_hash = $1")
                            .bind(&hash)
                            .fetch_optional(&mut *tx)
                            .await?;
                    match holder {
                        Some(h) if h != user_id => {
                            return Err(StoreError::conflict(
                                "user",
                                name,
                                "the bootstrap token belongs to another user",
                            ));
                        }
                        Some(_) => {}
                        None => {
                            sqlx::query(INSERT_TOKEN)
                                .bind(new_id("tok_"))
                                .bind(&user_id)
                                .bind(&hash)
                                .bind("(bootstrap)")
                                .bind(now)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                    tx.commit().await?;
                    user_id
                }))
            })
            .await?;
        self.get_user(&user_id).await
    }
}
