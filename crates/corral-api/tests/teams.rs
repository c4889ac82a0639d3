//! Teams through the real server (SQLite store): the admin team API with bad inputs,
//! what team owners, members and outsiders may do with a team's instance, the deploy
//! rate limit and the sign-up role. Team instances are written to the store directly
//! (no compute driver runs here): these tests are about who may do what.

mod common;

use chrono::Utc;
use common::{Backend, TestApp, spawn_app, spawn_app_with};
use corral_core::{
    ComputeSpec, ComputeType, Desired, Instance, InstanceSettings, Role, State,
    catalog::builtin_models,
};
use serde_json::json;
use uuid::Uuid;

async fn user(app: &TestApp, role: Role) -> (Uuid, String) {
    let (email, token) = app.user_with_role(role).await;
    let found = app.state.store.user_by_email(&email).await.unwrap();
    (found.unwrap().id, token)
}

async fn team_instance(app: &TestApp, owner: Uuid, team: Option<Uuid>) -> Uuid {
    let model = builtin_models().remove(0);
    app.state.store.upsert_model(&model).await.unwrap();
    let now = Utc::now();
    let inst = Instance {
        id: Uuid::now_v7(),
        owner_id: owner,
        team_id: team,
        model_id: model.id,
        driver: "local".into(),
        compute: ComputeSpec {
            compute_type: ComputeType::Local,
            cpu: 1.0,
            memory: 1024,
            gpu_count: 0,
            instance_type: None,
            spot: false,
        },
        settings: InstanceSettings::default(),
        desired: Desired::Running,
        state: State::Pending,
        state_reason: None,
        target_replicas: 1,
        created_at: now,
        updated_at: now,
        last_activity_at: now,
        running_since: None,
        running_seconds: 0,
    };
    app.state
        .store
        .create_instance(&inst, &corral_core::Admission::unlimited())
        .await
        .unwrap();
    inst.id
}

#[tokio::test]
async fn admin_team_api_and_bad_inputs() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, admin) = user(&app, Role::Admin).await;
    let (ann, user_token) = user(&app, Role::User).await;

    // Only admins manage teams; a refused request creates nothing.
    let (status, _) = app
        .post("/api/admin/teams", Some(&user_token), json!({"name": "ML"}))
        .await;
    assert_eq!(status, 403);
    let (status, teams) = app.get("/api/admin/teams", Some(&admin)).await;
    assert_eq!((status, teams), (200, json!([])));

    let (status, team) = app
        .post(
            "/api/admin/teams",
            Some(&admin),
            json!({"name": "  Équipe ML "}),
        )
        .await;
    assert_eq!(status, 201, "{team}");
    assert_eq!(team["name"], "Équipe ML");
    assert_eq!(team["members"], json!([]));
    let id = team["id"].as_str().unwrap().to_string();

    // Duplicate names (ignoring case), empty, huge and control-character names.
    let (status, body) = app
        .post(
            "/api/admin/teams",
            Some(&admin),
            json!({"name": "éQUIPE ml"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    for bad in [
        json!(""),
        json!("   "),
        json!("x".repeat(65)),
        json!("a\u{0}b"),
    ] {
        let (status, body) = app
            .post("/api/admin/teams", Some(&admin), json!({"name": bad}))
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_team_name");
    }
    let (status, _) = app
        .post(
            "/api/admin/teams",
            Some(&admin),
            json!({"name": "x".repeat(1_000_000)}),
        )
        .await;
    assert!(status == 400 || status == 413, "{status}");
    let (_, teams) = app.get("/api/admin/teams", Some(&admin)).await;
    assert_eq!(teams.as_array().unwrap().len(), 1);

    // Rename: to a taken name refused, unknown team 404.
    let (_, other) = app
        .post("/api/admin/teams", Some(&admin), json!({"name": "Ops"}))
        .await;
    let other_id = other["id"].as_str().unwrap().to_string();
    let (status, _) = app
        .put(
            &format!("/api/admin/teams/{other_id}"),
            Some(&admin),
            json!({"name": "équipe ml"}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, renamed) = app
        .put(
            &format!("/api/admin/teams/{other_id}"),
            Some(&admin),
            json!({"name": "Platform"}),
        )
        .await;
    assert_eq!((status, renamed["name"].clone()), (200, json!("Platform")));
    let ghost = Uuid::now_v7();
    let (status, _) = app
        .put(
            &format!("/api/admin/teams/{ghost}"),
            Some(&admin),
            json!({"name": "Z"}),
        )
        .await;
    assert_eq!(status, 404);

    // Members: unknown user or team 404, bad role 400, then add and change a role.
    let member_path = |team: &str, user: Uuid| format!("/api/admin/teams/{team}/members/{user}");
    let (status, _) = app
        .put(
            &member_path(&id, Uuid::now_v7()),
            Some(&admin),
            json!({"role": "member"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .put(
            &member_path(&ghost.to_string(), ann),
            Some(&admin),
            json!({"role": "member"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .put(
            &member_path(&id, ann),
            Some(&admin),
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .put(
            &member_path(&id, ann),
            Some(&user_token),
            json!({"role": "owner"}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, m) = app
        .put(
            &member_path(&id, ann),
            Some(&admin),
            json!({"role": "member"}),
        )
        .await;
    assert_eq!(status, 200, "{m}");
    let (status, m) = app
        .put(
            &member_path(&id, ann),
            Some(&admin),
            json!({"role": "owner"}),
        )
        .await;
    assert_eq!((status, m["role"].clone()), (200, json!("owner")));
    let (_, mine) = app.get("/api/teams", Some(&user_token)).await;
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(mine[0]["role"], "owner");
    assert_eq!(mine[0]["name"], "Équipe ML");

    // A team that owns an instance cannot be deleted; an empty one can.
    let inst = team_instance(&app, ann, Some(id.parse().unwrap())).await;
    let (status, _) = app
        .delete(&format!("/api/admin/teams/{id}"), Some(&admin))
        .await;
    assert_eq!(status, 409);
    assert!(
        app.state
            .store
            .delete_instance(inst, &corral_core::Admission::unlimited())
            .await
            .unwrap()
    );
    let (status, _) = app.delete(&member_path(&id, ann), Some(&admin)).await;
    assert_eq!(status, 204);
    let (status, _) = app.delete(&member_path(&id, ann), Some(&admin)).await;
    assert_eq!(status, 404);
    let (status, _) = app
        .delete(&format!("/api/admin/teams/{id}"), Some(&admin))
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .delete(&format!("/api/admin/teams/{id}"), Some(&admin))
        .await;
    assert_eq!(status, 404);

    // Each mutation left an audit row.
    let audit = app
        .state
        .store
        .list_audit(&corral_core::AuditFilter {
            action: Some("admin.teams".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    for action in [
        "admin.teams.create",
        "admin.teams.rename",
        "admin.teams.delete",
        "admin.teams.members.set",
        "admin.teams.members.remove",
    ] {
        assert!(audit.iter().any(|e| e.action == action), "{action}");
    }
}

#[tokio::test]
async fn team_members_use_owners_manage_others_see_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, admin) = user(&app, Role::Admin).await;
    let (owner, owner_token) = user(&app, Role::User).await;
    let (member, member_token) = user(&app, Role::User).await;
    let (_, outsider) = user(&app, Role::User).await;
    let (_, team) = app
        .post(
            "/api/admin/teams",
            Some(&admin),
            json!({"name": "Research"}),
        )
        .await;
    let team_id: Uuid = team["id"].as_str().unwrap().parse().unwrap();
    for (user, role) in [(owner, "owner"), (member, "member")] {
        let (status, _) = app
            .put(
                &format!("/api/admin/teams/{team_id}/members/{user}"),
                Some(&admin),
                json!({"role": role}),
            )
            .await;
        assert_eq!(status, 200);
    }
    // Deployed by the member for the team.
    let id = team_instance(&app, member, Some(team_id)).await;

    for token in [&owner_token, &member_token] {
        let (_, list) = app.get("/api/instances", Some(token)).await;
        assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
        assert_eq!(list[0]["team_id"], json!(team_id));
        let (status, _) = app.get(&format!("/api/instances/{id}"), Some(token)).await;
        assert_eq!(status, 200);
    }
    let (_, list) = app.get("/api/instances", Some(&outsider)).await;
    assert_eq!(list, json!([]));
    let (status, _) = app
        .get(&format!("/api/instances/{id}"), Some(&outsider))
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .delete(&format!("/api/models/{id}/stop"), Some(&outsider))
        .await;
    assert_eq!(status, 404);

    // A member (even the one who deployed it) uses it but cannot stop it; nothing changes.
    let (status, body) = app
        .delete(&format!("/api/models/{id}/stop"), Some(&member_token))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = app
        .put(
            &format!("/api/instances/{id}/settings"),
            Some(&member_token),
            json!({"max_replicas": 2}),
        )
        .await;
    assert_eq!(status, 403);
    let inst = app.state.store.instance(id).await.unwrap().unwrap();
    assert_eq!(
        (inst.desired, inst.settings.max_replicas),
        (Desired::Running, 1)
    );
    // A team owner can.
    let (status, body) = app
        .delete(&format!("/api/models/{id}/stop"), Some(&owner_token))
        .await;
    assert_eq!(status, 202, "{body}");
    let inst = app.state.store.instance(id).await.unwrap().unwrap();
    assert_eq!(inst.desired, Desired::Stopped);

    // The gateway by id: a non-member gets 404 like an unknown instance.
    let resp = app
        .http
        .get(app.url(&format!("/i/{id}/api/tags")))
        .bearer_auth(&outsider)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // Deploying for a team one is not in: 404, nothing created.
    let (status, body) = app
        .post(
            "/api/models/start",
            Some(&outsider),
            json!({"model_id": "smollm2:135m", "team_id": team_id}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        app.state
            .store
            .list_team_instances(team_id)
            .await
            .unwrap()
            .len(),
        1
    );

    // Leaving the team takes its instances out of sight.
    let (status, _) = app
        .delete(
            &format!("/api/admin/teams/{team_id}/members/{member}"),
            Some(&admin),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .get(&format!("/api/instances/{id}"), Some(&member_token))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn deploys_are_rate_limited_per_user() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.deploy_rate_per_user = 2).await;
    let (_, first) = user(&app, Role::User).await;
    let (_, second) = user(&app, Role::User).await;
    let body = json!({"model_id": "no-such-model"});
    for _ in 0..2 {
        let (status, _) = app
            .post("/api/models/start", Some(&first), body.clone())
            .await;
        assert_eq!(status, 400);
    }
    let resp = app
        .http
        .post(app.url("/api/models/start"))
        .bearer_auth(&first)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Per user: another user still deploys.
    let (status, _) = app.post("/api/models/start", Some(&second), body).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn signup_default_role_viewer_keeps_new_accounts_read_only() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.signup_default_role = Role::Viewer;
    })
    .await;
    let email = format!("new-{}@example.com", Uuid::now_v7().simple());
    let (status, body) = app
        .post(
            "/api/auth/signup",
            None,
            json!({"email": email, "password": "Correct-Horse-Battery-9", "confirmPassword": "Correct-Horse-Battery-9"}),
        )
        .await;
    assert!(status == 201 || status == 202, "{status} {body}");
    let user = app
        .state
        .store
        .user_by_email(&email)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.role, Role::Viewer);
}
