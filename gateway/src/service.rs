//! `dalc.v1.TaskService` over tonic: thin handlers that translate and delegate to [`Tasks`].

use std::sync::Arc;

use dalc_domain::TaskId;
use dalc_proto::v1::{
    GetTaskRequest, GetTaskResponse, SubmitTaskRequest, SubmitTaskResponse,
    task_service_server::TaskService,
};
use tonic::{Request, Response, Status};

use crate::{
    ApiError,
    convert::task_to_proto,
    tasks::Tasks,
    wait::{requested_timeout, wait_budget},
};

pub(crate) struct TaskServiceImpl {
    pub(crate) tasks: Arc<Tasks>,
}

#[tonic::async_trait]
impl TaskService for TaskServiceImpl {
    async fn submit_task(
        &self,
        request: Request<SubmitTaskRequest>,
    ) -> Result<Response<SubmitTaskResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let timeout = requested_timeout(request.timeout)?;
        let config = &self.tasks.config;
        let wait = request
            .wait
            .then(|| wait_budget(timeout, config.default_wait, config.max_wait, &metadata));
        let task = self.tasks.submit(request.expression, timeout, wait).await?;
        Ok(Response::new(SubmitTaskResponse {
            task: Some(task_to_proto(&task)),
        }))
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let id: TaskId = request
            .id
            .parse()
            .map_err(|err| ApiError::InvalidArgument(format!("{err}")))?;
        let timeout = requested_timeout(request.timeout)?;
        let config = &self.tasks.config;
        let wait = request
            .wait
            .then(|| wait_budget(timeout, config.default_wait, config.max_wait, &metadata));
        let task = self.tasks.get(id, wait).await?;
        Ok(Response::new(GetTaskResponse {
            task: Some(task_to_proto(&task)),
        }))
    }
}
