//! The permission matrix, spelled out: every (role, operation) pair with
//! its expected answer, denials included. It mirrors
//! docs/security/rbac.md; changing the matrix means changing both.

use mobius_core::Uuid;
use mobius_core::authz::{Grants, Operation, Role, TeamRole, permits, team_permits};

/// Columns: owner, admin, maintainer, observer, gitops.
const MATRIX: &[(Operation, [bool; 5])] = &[
    (Operation::ViewTenant, [true, true, true, true, true]),
    (Operation::ViewSites, [true, true, true, true, true]),
    (Operation::ManageSites, [true, true, false, false, true]),
    (Operation::ViewTeams, [true, true, true, true, true]),
    (Operation::ManageTeams, [true, true, false, false, true]),
    (Operation::ViewUsers, [true, true, true, false, false]),
    (Operation::ManageUsers, [true, true, false, false, false]),
    (
        Operation::ManageOwnApiTokens,
        [true, true, true, true, true],
    ),
    (
        Operation::ManageAllApiTokens,
        [true, true, false, false, false],
    ),
    (Operation::ViewDevices, [true, true, true, true, false]),
    (Operation::ManageDevices, [true, true, true, false, false]),
    (
        Operation::ManageEnrollmentTokens,
        [true, true, true, false, true],
    ),
    (Operation::ViewAuditLog, [true, true, false, false, false]),
    (Operation::ManageTenant, [true, true, false, false, false]),
    (Operation::ManageSso, [true, false, false, false, false]),
    (Operation::ManageBackbone, [true, true, false, false, false]),
];

#[test]
fn every_role_and_operation_pair_matches_the_documented_matrix() {
    assert_eq!(
        MATRIX.len(),
        Operation::ALL.len(),
        "an operation is missing from the table"
    );
    for op in Operation::ALL {
        let (_, row) = MATRIX
            .iter()
            .find(|(o, _)| *o == op)
            .expect("operation in table");
        for (role, expected) in Role::ALL.into_iter().zip(row) {
            assert_eq!(permits(role, op), *expected, "{role} / {op:?}");
        }
    }
}

#[test]
fn grants_never_exceed_ones_own_role() {
    use Role::*;
    let expected: &[(Role, &[Role])] = &[
        (Owner, &[Owner, Admin, Maintainer, Observer, Gitops]),
        (Admin, &[Admin, Maintainer, Observer, Gitops]),
        (Maintainer, &[Maintainer, Observer]),
        (Observer, &[Observer]),
        (Gitops, &[Gitops]),
    ];
    for (granter, allowed) in expected {
        for role in Role::ALL {
            assert_eq!(
                granter.can_grant(role),
                allowed.contains(&role),
                "{granter} granting {role}"
            );
        }
    }
}

/// The grants of a principal (a `Principal` itself can only be made by
/// authentication inside mobius-core).
fn principal(role: Role, team_roles: Vec<(Uuid, TeamRole)>, token_team: Option<Uuid>) -> Grants {
    Grants {
        role,
        team_roles,
        token_team,
    }
}

#[test]
fn team_roles_add_device_rights_in_their_team_only() {
    let team = Uuid::now_v7();
    let other = Uuid::now_v7();
    for (team_role, op, expected) in [
        (TeamRole::Maintainer, Operation::ViewDevices, true),
        (TeamRole::Maintainer, Operation::ManageDevices, true),
        (TeamRole::Maintainer, Operation::ManageSites, false),
        (TeamRole::Observer, Operation::ViewDevices, true),
        (TeamRole::Observer, Operation::ManageDevices, false),
    ] {
        assert_eq!(
            team_permits(team_role, op),
            expected,
            "{team_role:?} / {op:?}"
        );
        // A gitops user has no device rights of its own, so any it has
        // come from the team role, and only for that team.
        let p = principal(Role::Gitops, vec![(team, team_role)], None);
        assert_eq!(
            p.authorize(op, Some(team)).is_ok(),
            expected || permits(Role::Gitops, op)
        );
        assert_eq!(
            p.authorize(op, Some(other)).is_ok(),
            permits(Role::Gitops, op)
        );
    }
}

#[test]
fn team_scoped_tokens_reach_only_their_team() {
    let team = Uuid::now_v7();
    let p = principal(Role::Maintainer, Vec::new(), Some(team));
    assert!(p.authorize(Operation::ViewDevices, Some(team)).is_ok());
    assert!(p.authorize(Operation::ManageDevices, Some(team)).is_ok());
    assert!(
        p.authorize(Operation::ViewDevices, Some(Uuid::now_v7()))
            .is_err()
    );
    assert!(p.authorize(Operation::ViewDevices, None).is_err());
    for op in [
        Operation::ViewTenant,
        Operation::ViewSites,
        Operation::ViewTeams,
    ] {
        assert!(p.authorize(op, None).is_ok(), "{op:?}");
    }
    for op in [
        Operation::ViewUsers,
        Operation::ManageEnrollmentTokens,
        Operation::ManageOwnApiTokens,
        Operation::ViewAuditLog,
    ] {
        assert!(p.authorize(op, None).is_err(), "{op:?}");
    }
    // An observer token in its own team still cannot manage devices.
    let observer = principal(Role::Observer, Vec::new(), Some(team));
    assert!(
        observer
            .authorize(Operation::ManageDevices, Some(team))
            .is_err()
    );
}
