DROP TABLE changefeed_consumers;
