# Shortcuts; README.md explains each. `make help` lists the documented targets.
.PHONY: help run test lint fmt bench ci \
	create-cluster image deploy status port-forward teardown

# Kubernetes (README: "Kubernetes"). Override any of these on the command line, e.g.
#   make deploy OVERLAY=production KUBE_CONTEXT=my-cluster
# The kind cluster's name, and its config (1 control plane + 2 workers, NodePorts mapped).
CLUSTER ?= dalc
KIND_CONFIG ?= k8s/kind-cluster.yaml
# The image `make image` builds and loads; the dev overlay deploys dalc:dev.
IMAGE_NAME ?= dalc
IMAGE_TAG ?= dev
IMAGE ?= $(IMAGE_NAME):$(IMAGE_TAG)
# A directory of k8s/overlays/ (dev, production, production-keda), and its namespace.
OVERLAY ?= dev
NAMESPACE ?= dalc
# Every kubectl call names its context, so a deploy never lands on another cluster by accident;
# kind calls its context kind-<cluster>.
KUBE_CONTEXT ?= kind-$(CLUSTER)
KUBECTL = kubectl --context $(KUBE_CONTEXT)
# `make port-forward`: local ports for the gateway's gRPC (50051) and HTTP (8080).
GRPC_PORT ?= 50051
HTTP_PORT ?= 8080
ROLLOUT_TIMEOUT ?= 5m

help:           ## this list
	@grep -E '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | sed 's/:.*## /\t/' | expand -t 16

run:            ## the embedded default: gateway + workers, SQLite, in-process queue
	cargo run --release --bin dalc -- up

test:           ## the whole suite against real RabbitMQ and PostgreSQL (started/installed if needed)
	scripts/test.sh

lint:           ## cargo fmt --check, clippy -D warnings, buf lint
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	buf lint

fmt:            ## cargo fmt
	cargo fmt --all

bench:          ## expression-engine benchmarks (criterion)
	cargo bench -p dalc-calc

ci:             ## what CI runs (.ci/run)
	bash .ci/run

create-cluster: ## a local kind cluster (k8s/kind-cluster.yaml: 1 control plane + 2 workers)
	kind create cluster --name $(CLUSTER) --config $(KIND_CONFIG)

image:          ## docker build the image, then load it into the kind cluster
	docker build --tag $(IMAGE) --file Dockerfile .
	kind load docker-image $(IMAGE) --name $(CLUSTER)

deploy:         ## kubectl apply -k k8s/overlays/$(OVERLAY) (default: dev)
	$(KUBECTL) apply -k k8s/overlays/$(OVERLAY)

status:         ## pods, services, and wait for every rollout
	$(KUBECTL) -n $(NAMESPACE) get pods,services -o wide
	$(KUBECTL) -n $(NAMESPACE) rollout status statefulset/postgres --timeout $(ROLLOUT_TIMEOUT)
	$(KUBECTL) -n $(NAMESPACE) rollout status statefulset/rabbitmq --timeout $(ROLLOUT_TIMEOUT)
	$(KUBECTL) -n $(NAMESPACE) rollout status deployment/dalc-gateway --timeout $(ROLLOUT_TIMEOUT)
	$(KUBECTL) -n $(NAMESPACE) rollout status deployment/dalc-worker --timeout $(ROLLOUT_TIMEOUT)

port-forward:   ## the gateway Service's gRPC and HTTP on localhost:$(GRPC_PORT) and :$(HTTP_PORT) (Ctrl-C stops)
	$(KUBECTL) -n $(NAMESPACE) port-forward service/dalc-gateway $(GRPC_PORT):50051 $(HTTP_PORT):8080

teardown:       ## delete the kind cluster (and everything in it)
	kind delete cluster --name $(CLUSTER)
