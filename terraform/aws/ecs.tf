resource "aws_ecs_cluster" "main" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

# The local sealer's master key until KMS sealing is wired into the cloud
# binary (the sealer key above is for that); 32 random bytes, base64.
resource "random_bytes" "master_key" {
  length = 32
}

resource "aws_secretsmanager_secret" "master_key" {
  #checkov:skip=CKV2_AWS_57:A master key is not rotated by replacing it (sealed data would not open); see docs/operations
  name       = "${var.name}/master-key"
  kms_key_id = aws_kms_key.data.arn
}

resource "aws_secretsmanager_secret_version" "master_key" {
  secret_id     = aws_secretsmanager_secret.master_key.id
  secret_string = random_bytes.master_key.base64
}

locals {
  common_environment = [
    { name = "MOBIUS_LISTEN", value = "0.0.0.0:8080" },
    { name = "MOBIUS_DEVICE_LISTEN", value = "0.0.0.0:8443" },
    { name = "MOBIUS_DATA_DIR", value = "/tmp/mobius" },
    { name = "MOBIUS_MIGRATE_ON_START", value = "false" },
    { name = "MOBIUS_LOG_FORMAT", value = "json" },
    { name = "MOBIUS_DEVICE_HOSTNAMES", value = jsonencode(var.device_hostnames) },
    { name = "MOBIUS_KMS_KEY_ARN", value = aws_kms_key.sealer.arn },
  ]
  serving_secrets = [
    { name = "MOBIUS_DATABASE_APP_URL", valueFrom = aws_secretsmanager_secret.app_url.arn },
    { name = "MOBIUS_MASTER_KEY", valueFrom = aws_secretsmanager_secret.master_key.arn },
  ]
  container_hardening = {
    user                   = "65532:65532"
    readonlyRootFilesystem = true
    privileged             = false
    linuxParameters        = { capabilities = { drop = ["ALL"] }, initProcessEnabled = true }
    mountPoints            = [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }]
    ulimits                = [{ name = "nofile", softLimit = 1048576, hardLimit = 1048576 }]
    stopTimeout            = 45
  }
}

resource "aws_ecs_task_definition" "server" {
  family                   = "${var.name}-server"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.server_cpu
  memory                   = var.server_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  volume {
    name = "tmp"
  }
  container_definitions = jsonencode([merge(local.container_hardening, {
    name      = "server"
    image     = var.server_image
    essential = true
    command   = ["serve", "--role", "api"]
    portMappings = [
      { containerPort = 8080, protocol = "tcp" },
      { containerPort = 8443, protocol = "tcp" },
    ]
    environment = local.common_environment
    secrets     = local.serving_secrets
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.server.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = "server"
      }
    }
  })])
}

resource "aws_ecs_task_definition" "worker" {
  family                   = "${var.name}-worker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 512
  memory                   = 1024
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  volume {
    name = "tmp"
  }
  container_definitions = jsonencode([merge(local.container_hardening, {
    name        = "worker"
    image       = var.server_image
    essential   = true
    command     = ["serve", "--role", "worker"]
    environment = local.common_environment
    secrets     = local.serving_secrets
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.worker.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = "worker"
      }
    }
  })])
}

# Run once per release before updating the services:
#   aws ecs run-task --cluster mobius --task-definition mobius-migrate ...
resource "aws_ecs_task_definition" "migrate" {
  family                   = "${var.name}-migrate"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  volume {
    name = "tmp"
  }
  container_definitions = jsonencode([merge(local.container_hardening, {
    name        = "migrate"
    image       = var.server_image
    essential   = true
    command     = ["migrate"]
    environment = [{ name = "MOBIUS_DATA_DIR", value = "/tmp/mobius" }]
    secrets = [
      { name = "MOBIUS_DATABASE_URL", valueFrom = aws_secretsmanager_secret.owner_url.arn },
      { name = "MOBIUS_DATABASE_APP_URL", valueFrom = aws_secretsmanager_secret.app_url.arn },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.migrate.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = "migrate"
      }
    }
  })])
}

resource "aws_ecs_service" "server" {
  name            = "${var.name}-server"
  cluster         = aws_ecs_cluster.main.id
  task_definition = aws_ecs_task_definition.server.arn
  desired_count   = var.server_count
  launch_type     = "FARGATE"
  # Rolling: one replica at a time stays out (agents reconnect elsewhere).
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 150
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.admin.arn
    container_name   = "server"
    container_port   = 8080
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.devices.arn
    container_name   = "server"
    container_port   = 8443
  }
  depends_on = [aws_lb_listener.admin, aws_lb_listener.devices]
}

resource "aws_ecs_service" "worker" {
  name            = "${var.name}-worker"
  cluster         = aws_ecs_cluster.main.id
  task_definition = aws_ecs_task_definition.worker.arn
  desired_count   = var.worker_count
  launch_type     = "FARGATE"
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }
}
