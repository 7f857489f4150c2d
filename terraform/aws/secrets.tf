# Passwords of the two database roles and the URLs the server reads, in
# Secrets Manager (encrypted with the data key). ECS injects them into the
# containers; they never appear in task definitions or state outputs.
#
# The owner is the RDS master user (runs migrations). The request role
# `mobius_app` (NOSUPERUSER, NOBYPASSRLS, owns nothing) is created once by
# the operator with this password (see README.md); `migrate` grants it
# what it needs.

resource "random_password" "owner" {
  length  = 40
  special = false
}

resource "random_password" "app" {
  length  = 40
  special = false
}

resource "aws_secretsmanager_secret" "owner_url" {
  #checkov:skip=CKV2_AWS_57:Rotating the owner password needs a Mobius-aware rotation Lambda (not built); rotate with the runbook in README.md
  name       = "${var.name}/database-owner-url"
  kms_key_id = aws_kms_key.data.arn
}

resource "aws_secretsmanager_secret_version" "owner_url" {
  secret_id     = aws_secretsmanager_secret.owner_url.id
  secret_string = "postgres://mobius_owner:${random_password.owner.result}@${aws_db_instance.main.address}:5432/mobius?sslmode=require"
}

resource "aws_secretsmanager_secret" "app_url" {
  #checkov:skip=CKV2_AWS_57:Rotating the request role's password needs a Mobius-aware rotation Lambda (not built); rotate with the runbook in README.md
  name       = "${var.name}/database-app-url"
  kms_key_id = aws_kms_key.data.arn
}

resource "aws_secretsmanager_secret_version" "app_url" {
  secret_id     = aws_secretsmanager_secret.app_url.id
  secret_string = "postgres://mobius_app:${random_password.app.result}@${aws_db_instance.main.address}:5432/mobius?sslmode=require"
}

resource "aws_secretsmanager_secret" "app_password" {
  #checkov:skip=CKV2_AWS_57:See app_url
  name       = "${var.name}/database-app-password"
  kms_key_id = aws_kms_key.data.arn
}

resource "aws_secretsmanager_secret_version" "app_password" {
  secret_id     = aws_secretsmanager_secret.app_password.id
  secret_string = random_password.app.result
}
