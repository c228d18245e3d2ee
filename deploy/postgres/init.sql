-- Run once by the postgres image on an empty data volume (deploy/compose.yaml):
-- the three databases of the fleet. Each service also creates its database if
-- it may, and applies its own schema migrations at start-up under an advisory
-- lock. Kubernetes does the same with the Job in k8s/base/migrate.yaml.
CREATE DATABASE links;
CREATE DATABASE analytics;
CREATE DATABASE gateway;
