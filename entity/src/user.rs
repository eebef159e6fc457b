//! `users`: the platform's accounts. The worker only references `id` (and looks users up by email in `submit`).
#![allow(missing_docs)]

use sea_orm::entity::prelude::*;

/// A platform user. Only the columns the worker reads are mapped; the platform has more (password, ...).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub email: String,
    pub name: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
