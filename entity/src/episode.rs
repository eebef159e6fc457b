//! `episodes`: one agent turn of an attempt (the oracle agent yields one).
#![allow(missing_docs)]

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "episodes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub attempt_id: Uuid,
    pub index: i32,
    #[sea_orm(column_type = "Text")]
    pub state_analysis: String,
    #[sea_orm(column_type = "Text")]
    pub explanation: String,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub commands: Option<Json>,
    pub duration_ms: Option<i32>,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub metadata: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::attempt::Entity",
        from = "Column::AttemptId",
        to = "super::attempt::Column::Id",
        on_delete = "Cascade"
    )]
    Attempt,
}

impl Related<super::attempt::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Attempt.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
