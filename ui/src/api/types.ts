// The management API's shapes, as its OpenAPI document defines them: `schema.gen.ts` is
// generated from crates/corral-api/openapi.json by scripts/build-ui.sh (openapi-typescript),
// and `scripts/test-ui.sh` fails when it is stale. These aliases keep the pages' names.

import type { components } from './schema.gen';

/** Every schema of the API's OpenAPI document, by its name there. */
export type Schemas = components['schemas'];

export type Role = Schemas['Role'];
/** Every role, in the order the UI lists them. */
export const ROLES = ['admin', 'user', 'viewer'] as const satisfies readonly Role[];
// A role the server adds and this list lacks fails to typecheck here.
const allRoles: Exclude<Role, (typeof ROLES)[number]> extends never ? true : false = true;
void allRoles;

export type User = Schemas['UserView'];
export type TokenPair = Schemas['TokenPair'];
export type MfaChallenge = Schemas['MfaChallenge'];
export type LoginResponse = Schemas['LoginResponse'];
export type Accepted = Schemas['Accepted'];
export type MfaEnrollment = Schemas['Enrollment'];
export type ApiKey = Schemas['KeyView'];
export type CreatedKey = Schemas['CreatedKey'];
export type UsersPage = Schemas['UsersPage'];
export type Outcome = Schemas['Outcome'];
export type AuditEntry = Schemas['AuditEntry'];
export type AuditPage = Schemas['AuditPage'];
export type OutboxMessage = Schemas['OutboxMessage'];
export type OutboxPage = Schemas['OutboxPage'];
export type Health = Schemas['Health'];
