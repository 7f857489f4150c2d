resource "aws_cloudwatch_log_group" "server" {
  name              = "/${var.name}/server"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.data.arn
}

resource "aws_cloudwatch_log_group" "worker" {
  name              = "/${var.name}/worker"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.data.arn
}

resource "aws_cloudwatch_log_group" "migrate" {
  name              = "/${var.name}/migrate"
  retention_in_days = 365
  kms_key_id        = aws_kms_key.data.arn
}
