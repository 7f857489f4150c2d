resource "aws_security_group" "admin_lb" {
  name        = "${var.name}-admin-lb"
  description = "Admin API load balancer"
  vpc_id      = var.vpc_id

  ingress {
    description = "HTTPS to the admin API"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = var.admin_allowed_cidrs
  }
  egress {
    description     = "To the servers' admin port"
    from_port       = 8080
    to_port         = 8080
    protocol        = "tcp"
    security_groups = [aws_security_group.tasks.id]
  }
}

resource "aws_security_group" "device_lb" {
  name        = "${var.name}-device-lb"
  description = "Device NLB (TCP passthrough)"
  vpc_id      = var.vpc_id

  ingress {
    description = "Agents (mutual TLS, ended at the servers)"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = var.device_allowed_cidrs
  }
  egress {
    description     = "To the servers' device port"
    from_port       = 8443
    to_port         = 8443
    protocol        = "tcp"
    security_groups = [aws_security_group.tasks.id]
  }
  egress {
    description     = "Health checks on the admin port"
    from_port       = 8080
    to_port         = 8080
    protocol        = "tcp"
    security_groups = [aws_security_group.tasks.id]
  }
}

resource "aws_security_group" "tasks" {
  name        = "${var.name}-tasks"
  description = "Mobius server and worker tasks"
  vpc_id      = var.vpc_id
}

resource "aws_security_group_rule" "tasks_admin_from_alb" {
  description              = "Admin API from the ALB"
  type                     = "ingress"
  security_group_id        = aws_security_group.tasks.id
  from_port                = 8080
  to_port                  = 8080
  protocol                 = "tcp"
  source_security_group_id = aws_security_group.admin_lb.id
}

resource "aws_security_group_rule" "tasks_health_from_nlb" {
  description              = "Health checks from the NLB"
  type                     = "ingress"
  security_group_id        = aws_security_group.tasks.id
  from_port                = 8080
  to_port                  = 8080
  protocol                 = "tcp"
  source_security_group_id = aws_security_group.device_lb.id
}

resource "aws_security_group_rule" "tasks_devices_from_nlb" {
  description              = "Agents through the NLB"
  type                     = "ingress"
  security_group_id        = aws_security_group.tasks.id
  from_port                = 8443
  to_port                  = 8443
  protocol                 = "tcp"
  source_security_group_id = aws_security_group.device_lb.id
}

resource "aws_security_group_rule" "tasks_to_database" {
  description              = "Postgres"
  type                     = "egress"
  security_group_id        = aws_security_group.tasks.id
  from_port                = 5432
  to_port                  = 5432
  protocol                 = "tcp"
  source_security_group_id = aws_security_group.database.id
}

resource "aws_security_group_rule" "tasks_to_aws_apis" {
  description       = "AWS APIs (KMS, Secrets Manager, ECR, CloudWatch Logs) over HTTPS"
  type              = "egress"
  security_group_id = aws_security_group.tasks.id
  from_port         = 443
  to_port           = 443
  protocol          = "tcp"
  cidr_blocks       = ["0.0.0.0/0"]
}

resource "aws_security_group" "database" {
  name        = "${var.name}-database"
  description = "Postgres, from the tasks only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "Postgres from the tasks"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [aws_security_group.tasks.id]
  }
}
