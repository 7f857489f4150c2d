variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "mobius"
}

variable "vpc_id" {
  description = "VPC to run in."
  type        = string
}

variable "private_subnet_ids" {
  description = "Subnets (at least two AZs) for the tasks and the database; no public IPs."
  type        = list(string)
}

variable "public_subnet_ids" {
  description = "Subnets for the internet-facing load balancers."
  type        = list(string)
}

variable "server_image" {
  description = "The cloud server image (deploy/docker/server-cloud.Dockerfile), pinned by digest: registry/mobius-server-cloud@sha256:..."
  type        = string
}

variable "ecr_repository_arn" {
  description = "The ECR repository holding server_image (the tasks may pull from it only)."
  type        = string
}

variable "admin_certificate_arn" {
  description = "ACM certificate for the admin API's HTTPS listener."
  type        = string
}

variable "admin_allowed_cidrs" {
  description = "Who may reach the admin API."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "device_allowed_cidrs" {
  description = "Who may reach the device port (agents)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "device_hostnames" {
  description = "Names agents use for the device NLB (put in the listener certificate)."
  type        = list(string)
}

variable "server_count" {
  description = "Request-serving replicas (role api)."
  type        = number
  default     = 3
}

variable "worker_count" {
  description = "Scheduled-job replicas (role worker); jobs run once across replicas, so 1 suffices."
  type        = number
  default     = 1
}

variable "server_cpu" {
  type    = number
  default = 1024
}

variable "server_memory" {
  type    = number
  default = 2048
}

variable "db_instance_class" {
  type    = string
  default = "db.m7g.large"
}

variable "db_allocated_storage" {
  type    = number
  default = 100
}

variable "db_backup_retention_days" {
  description = "Automated backups and point-in-time recovery window."
  type        = number
  default     = 14
}
