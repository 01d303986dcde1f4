DROP TABLE sync_fence;
