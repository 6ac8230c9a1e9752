// Apollo Client 4 against a live gateway (TILLIT_URL, TILLIT_APP_KEY, TILLIT_MEMBER_ID: a member
// who consents to personalized_offers and has an income band). With the cache keyed as the
// README says, a value released under one purpose is never shown under another, in either order,
// and withheld fields reach the app as errors it can read beside the data.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ApolloClient, HttpLink, InMemoryCache, gql } from "@apollo/client";
import { CombinedGraphQLErrors } from "@apollo/client/errors";

const MEMBER = gql`
  query Member($id: ID!, $purpose: String!) {
    member(id: $id, purpose: $purpose) { id purpose firstName incomeBand }
  }
`;

function client() {
  return new ApolloClient({
    link: new HttpLink({
      uri: `${process.env.TILLIT_URL}/graphql`,
      headers: { authorization: `Bearer ${process.env.TILLIT_APP_KEY}` },
    }),
    cache: new InMemoryCache({ typePolicies: { Member: { keyFields: ["id", "purpose"] } } }),
    defaultOptions: { query: { errorPolicy: "all", fetchPolicy: "cache-first" } },
  });
}

const id = process.env.TILLIT_MEMBER_ID;
const read = (apollo, purpose) => apollo.query({ query: MEMBER, variables: { id, purpose } });

function codes(result) {
  assert.ok(CombinedGraphQLErrors.is(result.error), `expected GraphQL errors, got ${result.error}`);
  return Object.fromEntries(result.error.errors.map((e) => [e.path.at(-1), e.extensions.code]));
}

test("a value released under one purpose is not shown from the cache under another", async () => {
  const apollo = client();

  const offers = await read(apollo, "personalized_offers");
  const service = await read(apollo, "membership_service");

  assert.equal(offers.data.member.incomeBand, "500-750k");
  assert.equal(service.data.member.incomeBand, null);
  assert.equal(service.data.member.purpose, "membership_service");
  assert.equal(codes(service).incomeBand, "CATEGORY_NOT_IN_PURPOSE");
});

test("a field withheld under one purpose does not null the value released under another", async () => {
  const apollo = client();

  const service = await read(apollo, "membership_service");
  const offers = await read(apollo, "personalized_offers");

  assert.equal(service.data.member.incomeBand, null);
  assert.equal(offers.data.member.incomeBand, "500-750k");
  assert.equal(codes(offers).firstName, "CATEGORY_NOT_IN_PURPOSE");
});

test("a request error reaches Apollo as a GraphQL error with its code, not a network error", async () => {
  const apollo = client();

  const result = await apollo.query({
    query: MEMBER,
    variables: { id: "not-a-uuid", purpose: "personalized_offers" },
  });

  assert.equal(codes(result).member, "BAD_USER_INPUT");
});

test("a missing key leaves public fields readable and refuses the member", async () => {
  const apollo = new ApolloClient({
    link: new HttpLink({ uri: `${process.env.TILLIT_URL}/graphql` }),
    cache: new InMemoryCache(),
  });

  const result = await apollo.query({ query: MEMBER, variables: { id, purpose: "personalized_offers" }, errorPolicy: "all" });

  assert.equal(result.data.member, null);
  assert.equal(codes(result).member, "UNAUTHENTICATED");
});
