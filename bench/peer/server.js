// The peer in `make bench`: PostGraphile 4 as its documentation recommends for production
// (no GraphiQL, no query log, no schema watching), one Node process, JWTs verified by
// PostGraphile and their claims handed to PostgreSQL as `jwt.claims.*` settings.
"use strict";
const http = require("http");
const { postgraphile } = require("postgraphile");

const handler = postgraphile(process.env.PEER_DATABASE_URL, "bench_peer", {
  graphiql: false,
  disableQueryLog: true,
  watchPg: false,
  retryOnInitFail: false,
  dynamicJson: true,
  setofFunctionsContainNulls: false,
  ignoreRBAC: false,
  legacyRelations: "omit",
  disableDefaultMutations: true,
  enableQueryBatching: false,
  jwtSecret: process.env.PEER_JWT_SECRET,
});
http.createServer(handler).listen(Number(process.env.PEER_PORT), "127.0.0.1");
