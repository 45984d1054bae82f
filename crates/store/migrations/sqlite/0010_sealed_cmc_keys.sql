-- The cmcKey vault (ushuru-vault): a branch's cmcKey is kept only sealed, by the branch's
-- own data key, which is kept only wrapped by the master key. Each seal is AES-256-GCM:
-- nonce and ciphertext are stored with the versions its associated data binds.
-- The plaintext column `cmc_key` stays for one purpose: a database written before this
-- migration still holds plaintext keys there, which `ushuru serve` seals at its next start
-- (it needs the master key, which SQL never sees) and then clears. SQLite cannot add table
-- constraints to an existing table; the repository writes the six columns together.
ALTER TABLE branches ADD COLUMN cmc_key_nonce BLOB;
ALTER TABLE branches ADD COLUMN cmc_key_sealed BLOB;
ALTER TABLE branches ADD COLUMN data_key_version INTEGER;
ALTER TABLE branches ADD COLUMN data_key_nonce BLOB;
ALTER TABLE branches ADD COLUMN data_key_wrapped BLOB;
ALTER TABLE branches ADD COLUMN master_key_version INTEGER;
