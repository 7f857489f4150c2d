output "device_endpoint" {
  description = "Give agents https://<this>:443 (or a DNS name in device_hostnames pointing here)."
  value       = aws_lb.devices.dns_name
}

output "admin_endpoint" {
  description = "The admin API (GraphQL at /api/graphql)."
  value       = aws_lb.admin.dns_name
}

output "sealer_kms_key_arn" {
  description = "The KMS key for the cloud edition's sealer."
  value       = aws_kms_key.sealer.arn
}

output "database_endpoint" {
  value = aws_db_instance.main.address
}

output "app_password_secret_arn" {
  description = "The request role's password (create the role with it once; README.md)."
  value       = aws_secretsmanager_secret.app_password.arn
}
