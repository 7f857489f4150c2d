# Agents: an NLB passing TCP through (mutual TLS ends at the servers, which
# verify client certificates themselves). Admin API: an ALB with HTTPS.

resource "aws_lb" "devices" {
  #checkov:skip=CKV_AWS_91:Access logs need an operator-chosen S3 bucket; enable them with access_logs once it exists
  #checkov:skip=CKV2_AWS_28:WAF does not apply to a TCP (NLB) listener
  name                             = "${var.name}-devices"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = var.public_subnet_ids
  security_groups                  = [aws_security_group.device_lb.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = true
}

resource "aws_lb_target_group" "devices" {
  name                 = "${var.name}-devices"
  port                 = 8443
  protocol             = "TCP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  # Agents reconnect to another replica; keep their address visible.
  preserve_client_ip = true

  health_check {
    protocol            = "HTTP"
    port                = "8080"
    path                = "/readyz"
    healthy_threshold   = 2
    unhealthy_threshold = 2
    interval            = 10
  }
}

resource "aws_lb_listener" "devices" {
  #checkov:skip=CKV_AWS_2:TCP passthrough on purpose: TLS (mutual) is ended by the servers
  #checkov:skip=CKV_AWS_103:TLS is ended by the servers, not the NLB
  load_balancer_arn = aws_lb.devices.arn
  port              = 443
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.devices.arn
  }
}

resource "aws_lb" "admin" {
  #checkov:skip=CKV_AWS_91:Access logs need an operator-chosen S3 bucket; enable them with access_logs once it exists
  #checkov:skip=CKV2_AWS_28:Attach your WAF web ACL (aws_wafv2_web_acl_association) if you use one
  name                       = "${var.name}-admin"
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = var.public_subnet_ids
  security_groups            = [aws_security_group.admin_lb.id]
  drop_invalid_header_fields = true
  enable_deletion_protection = true
  # GraphQL subscriptions are long-lived WebSockets.
  idle_timeout = 3600
}

resource "aws_lb_target_group" "admin" {
  #checkov:skip=CKV_AWS_378:Inside the VPC the admin port speaks HTTP; TLS ends at the ALB
  name                 = "${var.name}-admin"
  port                 = 8080
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30

  health_check {
    path                = "/readyz"
    matcher             = "200"
    healthy_threshold   = 2
    unhealthy_threshold = 2
    interval            = 10
  }
}

resource "aws_lb_listener" "admin" {
  load_balancer_arn = aws_lb.admin.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.admin_certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.admin.arn
  }
}
