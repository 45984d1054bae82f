-- The cmcKey vault (ushuru-vault): a branch's cmcKey is kept only sealed, by the branch's
-- own data key, which is kept only wrapped by the master key. Each seal is AES-256-GCM:
-- nonce and ciphertext are stored with the versions its associated data binds.
-- The plaintext column `cmc_key` stays for one purpose: a database written before this
-- migration still holds plaintext keys there, which `ushuru serve` seals at its next start
-- (it needs the master key, which SQL never sees) and then clears.
ALTER TABLE branches
    ADD COLUMN cmc_key_nonce      BYTEA,
    ADD COLUMN cmc_key_sealed     BYTEA,
    ADD COLUMN data_key_version   INTEGER,
    ADD COLUMN data_key_nonce     BYTEA,
    ADD COLUMN data_key_wrapped   BYTEA,
    ADD COLUMN master_key_version INTEGER,
    ADD CONSTRAINT branches_sealed_key_whole CHECK (
        (cmc_key_sealed IS NULL) = (cmc_key_nonce IS NULL)
        AND (cmc_key_sealed IS NULL) = (data_key_version IS NULL)
        AND (cmc_key_sealed IS NULL) = (data_key_nonce IS NULL)
        AND (cmc_key_sealed IS NULL) = (data_key_wrapped IS NULL)
        AND (cmc_key_sealed IS NULL) = (master_key_version IS NULL)),
    ADD CONSTRAINT branches_one_cmc_key CHECK (cmc_key IS NULL OR cmc_key_sealed IS NULL);
