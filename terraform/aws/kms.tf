data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account_root = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"
}

# Seals the server's secrets at rest (JWT signing keys, tenant CA keys):
# only the task role may use it, and only for encrypt/decrypt.
resource "aws_kms_key" "sealer" {
  description             = "${var.name}: seals signing and CA keys"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.sealer_key.json
}

resource "aws_kms_alias" "sealer" {
  name          = "alias/${var.name}-sealer"
  target_key_id = aws_kms_key.sealer.key_id
}

data "aws_iam_policy_document" "sealer_key" {
  #checkov:skip=CKV_AWS_109:In a key policy "*" is this key only; the account root statement is the AWS-required default that lets IAM administer it
  #checkov:skip=CKV_AWS_111:As above: a key policy, scoped to this key
  #checkov:skip=CKV_AWS_356:As above: a key policy, scoped to this key
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [local.account_root]
    }
  }
  statement {
    sid       = "ServerSealsAndOpens"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.task.arn]
    }
  }
}

# Encrypts the database, its backups, the secrets and the logs.
resource "aws_kms_key" "data" {
  description             = "${var.name}: database, secrets and logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.data_key.json
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name}-data"
  target_key_id = aws_kms_key.data.key_id
}

data "aws_iam_policy_document" "data_key" {
  #checkov:skip=CKV_AWS_109:In a key policy "*" is this key only; the account root statement is the AWS-required default that lets IAM administer it
  #checkov:skip=CKV_AWS_111:As above: a key policy, scoped to this key
  #checkov:skip=CKV_AWS_356:As above: a key policy, scoped to this key
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [local.account_root]
    }
  }
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.name}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:/${var.name}/*"]
    }
  }
}
